//! A JSON value that keeps object keys in the order the client wrote them.
//!
//! serde_json's `Value` sorts keys (its order-preserving feature would change every other crate's
//! output, features being unified). Schemas need the written order: a model told to produce
//! `{"name", "age"}` should write them in that order, as the schema's author meant.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum OrderedJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    pub fn get(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Object(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OrderedJson::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            OrderedJson::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            _ => None,
        }
    }
    pub fn is_object(&self) -> bool {
        matches!(self, OrderedJson::Object(_))
    }

    /// The serde_json value (keys sorted).
    pub fn to_value(&self) -> Value {
        match self {
            OrderedJson::Null => Value::Null,
            OrderedJson::Bool(b) => Value::Bool(*b),
            OrderedJson::Number(n) => Value::Number(n.clone()),
            OrderedJson::String(s) => Value::String(s.clone()),
            OrderedJson::Array(a) => Value::Array(a.iter().map(|v| v.to_value()).collect()),
            OrderedJson::Object(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// From a serde_json value (in its key order).
    pub fn from_value(v: &Value) -> OrderedJson {
        match v {
            Value::Null => OrderedJson::Null,
            Value::Bool(b) => OrderedJson::Bool(*b),
            Value::Number(n) => OrderedJson::Number(n.clone()),
            Value::String(s) => OrderedJson::String(s.clone()),
            Value::Array(a) => OrderedJson::Array(a.iter().map(OrderedJson::from_value).collect()),
            Value::Object(m) => OrderedJson::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), OrderedJson::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// Compact JSON text in written order.
    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        match self {
            OrderedJson::Object(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
            OrderedJson::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_value().to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<OrderedJson, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(OrderedJson::Number)
            .unwrap_or(OrderedJson::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v))
    }
    fn visit_unit<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }
    fn visit_none<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<OrderedJson, D::Error> {
        OrderedJson::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(OrderedJson::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut pairs: Vec<(String, OrderedJson)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, OrderedJson>()? {
            // A repeated key replaces the earlier one, as serde_json does.
            match pairs.iter_mut().find(|(pk, _)| *pk == k) {
                Some(slot) => slot.1 = v,
                None => pairs.push((k, v)),
            }
        }
        Ok(OrderedJson::Object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_written_order() {
        let j: OrderedJson =
            serde_json::from_str(r#"{"z": 1, "a": [true, null, "x"], "m": {"q": 2.5, "b": -3}}"#)
                .unwrap();
        assert_eq!(
            j.to_json_string(),
            r#"{"z":1,"a":[true,null,"x"],"m":{"q":2.5,"b":-3}}"#
        );
        let keys: Vec<_> = match &j {
            OrderedJson::Object(p) => p.iter().map(|(k, _)| k.as_str()).collect(),
            _ => unreachable!(),
        };
        assert_eq!(keys, ["z", "a", "m"]);
        assert_eq!(
            j.to_value(),
            serde_json::json!({"z": 1, "a": [true, null, "x"], "m": {"q": 2.5, "b": -3}})
        );
        assert_eq!(j.get("z"), Some(&OrderedJson::Number(1.into())));
    }
}
