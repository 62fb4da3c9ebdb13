//! JSON schemas compiled to a small grammar the byte matcher walks.
//!
//! Supported: `type` (one or several), `enum`, `const`, `properties` + `required` (keys in the
//! schema's order; required ones mandatory, others optional; no undeclared keys when properties
//! are given), `additionalProperties` as the value schema of a free-form object, `items`,
//! `minItems`/`maxItems`, `minLength`/`maxLength`, `anyOf`/`oneOf` (the first alternative that can
//! start with the next byte), single-element `allOf`, and local `$ref`s (`#/$defs/..`,
//! `#/definitions/..`) that do not recurse. Ignored: `pattern`, `format`, numeric bounds.

use super::ordered::OrderedJson;

pub type NodeId = u32;
pub type TrieId = u32;
pub type SeqId = u32;
pub type ObjId = u32;

/// Most nodes a schema may compile to.
pub const MAX_NODES: usize = 20_000;
/// Most properties one object may declare.
pub const MAX_PROPS: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Any JSON value.
    Any,
    Str {
        min: u32,
        max: u32,
    },
    Num {
        integer: bool,
    },
    /// One of a set of literal JSON texts (enum, const, true/false/null).
    Lits(TrieId),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    /// An object with declared properties.
    Object(ObjId),
    /// An object with any keys whose values match `values`.
    FreeObject {
        values: NodeId,
    },
    /// The first alternative that can start with the next byte.
    Union(Vec<NodeId>),
    /// A fixed sequence (tool-call envelopes).
    Seq(SeqId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Prop {
    /// The key as JSON text, quotes included.
    pub key_json: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub props: Vec<Prop>,
    /// `key_sets[i]`: the keys that may come next when properties before `i` are done: props
    /// `i..=` the first required one at or after `i` (all remaining when none is required).
    pub key_sets: Vec<TrieId>,
}

impl Object {
    /// Whether a required property remains at or after `i`.
    pub fn required_from(&self, i: usize) -> bool {
        self.props.iter().skip(i).any(|p| p.required)
    }
}

/// A part of a fixed sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// One of the literals of a trie.
    Lit(TrieId),
    /// One of the literals of a trie; its value index becomes the sequence's choice.
    Pick(TrieId),
    /// An optional single space.
    Space,
    Value(NodeId),
    /// The value node picked by the last literal's value index.
    Choice(Vec<NodeId>),
}

/// A trie of literal byte strings; terminal nodes carry the literal's index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trie {
    pub nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrieNode {
    pub children: Vec<(u8, u32)>,
    pub terminal: Option<u32>,
}

impl Trie {
    pub fn build(literals: &[Vec<u8>]) -> Trie {
        let mut t = Trie {
            nodes: vec![TrieNode::default()],
        };
        for (idx, lit) in literals.iter().enumerate() {
            t.insert(lit, idx as u32);
        }
        t
    }

    /// Add a literal with value index `value` (an earlier duplicate keeps its index).
    pub fn insert(&mut self, lit: &[u8], value: u32) {
        let mut at = 0usize;
        for &b in lit {
            at = match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some(&(_, next)) => next as usize,
                None => {
                    self.nodes.push(TrieNode::default());
                    let next = self.nodes.len() - 1;
                    self.nodes[at].children.push((b, next as u32));
                    next
                }
            };
        }
        self.nodes[at].terminal.get_or_insert(value);
    }

    pub fn step(&self, at: u32, b: u8) -> Option<u32> {
        self.nodes[at as usize]
            .children
            .iter()
            .find(|(c, _)| *c == b)
            .map(|&(_, n)| n)
    }

    /// The shortest byte string from `at` to a terminal node, and that terminal's value index.
    pub fn shortest_completion(&self, at: u32) -> (Vec<u8>, u32) {
        // Breadth-first: tries are small (enum values, keys).
        let mut prev: Vec<Option<(u32, u8)>> = vec![None; self.nodes.len()];
        let mut queue = std::collections::VecDeque::from([at]);
        let mut seen = vec![false; self.nodes.len()];
        seen[at as usize] = true;
        while let Some(n) = queue.pop_front() {
            if let Some(value) = self.nodes[n as usize].terminal {
                let mut out = Vec::new();
                let mut cur = n;
                while let Some((p, b)) = prev[cur as usize] {
                    out.push(b);
                    cur = p;
                }
                out.reverse();
                return (out, value);
            }
            for &(b, c) in &self.nodes[n as usize].children {
                if !seen[c as usize] {
                    seen[c as usize] = true;
                    prev[c as usize] = Some((n, b));
                    queue.push_back(c);
                }
            }
        }
        (Vec::new(), 0)
    }
}

/// A compiled grammar: the root value and the tables its nodes point into.
#[derive(Clone, Debug, PartialEq)]
pub struct Grammar {
    pub nodes: Vec<Node>,
    pub objects: Vec<Object>,
    pub tries: Vec<Trie>,
    pub seqs: Vec<Vec<Part>>,
    pub root: NodeId,
    /// The literals `true`, `false`, `null` (for `Any` and booleans).
    pub keyword_trie: TrieId,
    pub bool_trie: TrieId,
    pub null_trie: TrieId,
    pub any: NodeId,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unsupported JSON schema: {0}")]
pub struct SchemaError(pub String);

impl Grammar {
    fn empty() -> Grammar {
        let mut g = Grammar {
            nodes: Vec::new(),
            objects: Vec::new(),
            tries: Vec::new(),
            seqs: Vec::new(),
            root: 0,
            keyword_trie: 0,
            bool_trie: 0,
            null_trie: 0,
            any: 0,
        };
        g.keyword_trie = g.add_trie(&[b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]);
        g.bool_trie = g.add_trie(&[b"true".to_vec(), b"false".to_vec()]);
        g.null_trie = g.add_trie(&[b"null".to_vec()]);
        g.any = g.add(Node::Any);
        g
    }

    /// Any JSON object (Ollama's `format: "json"`, OpenAI's json_object).
    pub fn any_object() -> Grammar {
        let mut g = Grammar::empty();
        g.root = g.add(Node::FreeObject { values: g.any });
        g
    }

    /// Values valid against a JSON schema.
    pub fn from_schema(schema: &OrderedJson) -> Result<Grammar, SchemaError> {
        let mut g = Grammar::empty();
        let mut c = Compiler {
            g: &mut g,
            root: schema,
            ref_stack: Vec::new(),
        };
        let root = c.compile(schema, 0)?;
        g.root = root;
        Ok(g)
    }

    /// A tool call object `{"<name_key>": "<one of the tools>", "<args_key>": <that tool's arguments>}`.
    /// `tools` are (name, parameters schema).
    pub fn tool_call(
        tools: &[(String, OrderedJson)],
        name_key: &str,
        args_key: &str,
    ) -> Result<Grammar, SchemaError> {
        if tools.is_empty() {
            return Err(SchemaError(
                "a forced tool call needs at least one tool".into(),
            ));
        }
        let mut g = Grammar::empty();
        let mut names = Vec::new();
        let mut arg_nodes = Vec::new();
        for (name, params) in tools {
            names.push(
                serde_json::Value::String(name.clone())
                    .to_string()
                    .into_bytes(),
            );
            let mut c = Compiler {
                g: &mut g,
                root: params,
                ref_stack: Vec::new(),
            };
            // A tool without a parameters schema takes an object of anything.
            let node = match params {
                OrderedJson::Null => c.g.add(Node::FreeObject { values: c.g.any }),
                p => c.compile(p, 0)?,
            };
            arg_nodes.push(node);
        }
        let q = |k: &str| serde_json::Value::String(k.to_string()).to_string();
        let open = g.add_trie(&[format!("{{{}:", q(name_key)).into_bytes()]);
        let name_trie = g.add_trie(&names);
        let comma = g.add_trie(&[b",".to_vec()]);
        let args = g.add_trie(&[format!("{}:", q(args_key)).into_bytes()]);
        let close = g.add_trie(&[b"}".to_vec()]);
        let parts = vec![
            Part::Lit(open),
            Part::Space,
            Part::Pick(name_trie),
            Part::Lit(comma),
            Part::Space,
            Part::Lit(args),
            Part::Space,
            Part::Choice(arg_nodes),
            Part::Lit(close),
        ];
        g.seqs.push(parts);
        let seq = (g.seqs.len() - 1) as SeqId;
        g.root = g.add(Node::Seq(seq));
        Ok(g)
    }

    fn add(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    fn add_trie(&mut self, lits: &[Vec<u8>]) -> TrieId {
        self.tries.push(Trie::build(lits));
        (self.tries.len() - 1) as TrieId
    }

    /// Whether a value of `node` can begin with byte `b`.
    pub fn can_start(&self, node: NodeId, b: u8) -> bool {
        match &self.nodes[node as usize] {
            Node::Any => matches!(
                b,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            ),
            Node::Str { .. } => b == b'"',
            Node::Num { .. } => b == b'-' || b.is_ascii_digit(),
            Node::Lits(t) => self.tries[*t as usize].step(0, b).is_some(),
            Node::Array { .. } => b == b'[',
            Node::Object(_) | Node::FreeObject { .. } => b == b'{',
            Node::Union(alts) => alts.iter().any(|a| self.can_start(*a, b)),
            Node::Seq(s) => match self.seqs[*s as usize].first() {
                Some(Part::Lit(t) | Part::Pick(t)) => self.tries[*t as usize].step(0, b).is_some(),
                Some(Part::Value(n)) => self.can_start(*n, b),
                _ => false,
            },
        }
    }

    /// The shortest JSON text of a value of `node`.
    pub fn min_value(&self, node: NodeId, out: &mut Vec<u8>) {
        match &self.nodes[node as usize] {
            Node::Any => out.push(b'0'),
            Node::Str { min, .. } => {
                out.push(b'"');
                out.extend(std::iter::repeat_n(b'a', *min as usize));
                out.push(b'"');
            }
            Node::Num { .. } => out.push(b'0'),
            Node::Lits(t) => out.extend(self.tries[*t as usize].shortest_completion(0).0),
            Node::Array { items, min, .. } => {
                out.push(b'[');
                for i in 0..*min {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.min_value(*items, out);
                }
                out.push(b']');
            }
            Node::Object(o) => {
                out.push(b'{');
                self.required_props_from(*o, 0, true, out);
                out.push(b'}');
            }
            Node::FreeObject { .. } => out.extend_from_slice(b"{}"),
            Node::Union(alts) => {
                let best = alts
                    .iter()
                    .map(|a| {
                        let mut v = Vec::new();
                        self.min_value(*a, &mut v);
                        v
                    })
                    .min_by_key(|v| v.len())
                    .unwrap_or_else(|| b"0".to_vec());
                out.extend(best);
            }
            Node::Seq(s) => self.seq_completion(*s, 0, 0, out),
        }
    }

    /// `"key":value` for each required property from `from` on, comma separated (with a leading
    /// comma unless `first`).
    pub fn required_props_from(&self, obj: ObjId, from: usize, first: bool, out: &mut Vec<u8>) {
        let mut first = first;
        for p in self.objects[obj as usize]
            .props
            .iter()
            .skip(from)
            .filter(|p| p.required)
        {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&p.key_json);
            out.push(b':');
            self.min_value(p.node, out);
        }
    }

    /// The shortest text completing sequence `seq` from part `pos` on.
    pub fn seq_completion(&self, seq: SeqId, pos: usize, choice: u32, out: &mut Vec<u8>) {
        let mut choice = choice;
        for part in self.seqs[seq as usize].iter().skip(pos) {
            match part {
                Part::Lit(t) => out.extend(self.tries[*t as usize].shortest_completion(0).0),
                Part::Pick(t) => {
                    let (bytes, value) = self.tries[*t as usize].shortest_completion(0);
                    out.extend(bytes);
                    choice = value;
                }
                Part::Space => {}
                Part::Value(n) => self.min_value(*n, out),
                Part::Choice(nodes) => {
                    if let Some(n) = nodes.get(choice as usize) {
                        self.min_value(*n, out)
                    }
                }
            }
        }
    }
}

struct Compiler<'a> {
    g: &'a mut Grammar,
    root: &'a OrderedJson,
    ref_stack: Vec<String>,
}

impl Compiler<'_> {
    fn compile(&mut self, s: &OrderedJson, depth: usize) -> Result<NodeId, SchemaError> {
        if depth > 32 {
            return Err(SchemaError("schema nests deeper than 32 levels".into()));
        }
        if self.g.nodes.len() > MAX_NODES {
            return Err(SchemaError(format!(
                "schema is larger than {MAX_NODES} nodes"
            )));
        }
        let obj = match s {
            OrderedJson::Bool(true) => return Ok(self.g.any),
            OrderedJson::Bool(false) => {
                return Err(SchemaError("the schema `false` matches nothing".into()))
            }
            OrderedJson::Object(o) => o,
            other => {
                return Err(SchemaError(format!(
                    "a schema must be an object or a boolean, got {}",
                    other.to_json_string()
                )))
            }
        };
        let get = |k: &str| obj.iter().find(|(kk, _)| kk == k).map(|(_, v)| v);

        if let Some(r) = get("$ref") {
            return self.compile_ref(r, depth);
        }
        if let Some(c) = get("const") {
            let t = self.g.add_trie(&[c.to_json_string().into_bytes()]);
            return Ok(self.g.add(Node::Lits(t)));
        }
        if let Some(e) = get("enum") {
            let OrderedJson::Array(vals) = e else {
                return Err(SchemaError("enum must be an array".into()));
            };
            if vals.is_empty() {
                return Err(SchemaError("enum must not be empty".into()));
            }
            let lits: Vec<Vec<u8>> = vals
                .iter()
                .map(|v| v.to_json_string().into_bytes())
                .collect();
            let t = self.g.add_trie(&lits);
            return Ok(self.g.add(Node::Lits(t)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = get(key) {
                let OrderedJson::Array(alts) = alts else {
                    return Err(SchemaError(format!("{key} must be an array")));
                };
                if alts.is_empty() {
                    return Err(SchemaError(format!("{key} must not be empty")));
                }
                let nodes = alts
                    .iter()
                    .map(|a| self.compile(a, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(self.g.add(Node::Union(nodes)));
            }
        }
        if let Some(all) = get("allOf") {
            match all {
                OrderedJson::Array(v) if v.len() == 1 => return self.compile(&v[0], depth + 1),
                _ => {
                    return Err(SchemaError(
                        "allOf is supported with a single schema only".into(),
                    ))
                }
            }
        }
        let types: Vec<&str> = match get("type") {
            None => {
                if get("properties").is_some() {
                    vec!["object"]
                } else if get("items").is_some() {
                    vec!["array"]
                } else {
                    return Ok(self.g.any);
                }
            }
            Some(OrderedJson::String(t)) => vec![t.as_str()],
            Some(OrderedJson::Array(ts)) => ts
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| SchemaError("type entries must be strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(SchemaError(format!(
                    "type must be a string or an array, got {}",
                    other.to_json_string()
                )))
            }
        };
        if types.is_empty() {
            return Err(SchemaError("type must not be an empty array".into()));
        }
        let mut nodes = Vec::new();
        for t in types {
            nodes.push(self.compile_type(t, obj, depth)?);
        }
        Ok(if nodes.len() == 1 {
            nodes[0]
        } else {
            self.g.add(Node::Union(nodes))
        })
    }

    fn compile_type(
        &mut self,
        t: &str,
        obj: &[(String, OrderedJson)],
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        let get = |k: &str| obj.iter().find(|(kk, _)| kk == k).map(|(_, v)| v);
        let count = |k: &str, default: u32| -> u32 {
            get(k)
                .and_then(|v| v.as_u64())
                .map(|n| n.min(u32::MAX as u64) as u32)
                .unwrap_or(default)
        };
        Ok(match t {
            "string" => {
                let (min, max) = (count("minLength", 0), count("maxLength", u32::MAX));
                if min > max {
                    return Err(SchemaError(format!(
                        "minLength {min} exceeds maxLength {max}"
                    )));
                }
                self.g.add(Node::Str { min, max })
            }
            "number" => self.g.add(Node::Num { integer: false }),
            "integer" => self.g.add(Node::Num { integer: true }),
            "boolean" => self.g.add(Node::Lits(self.g.bool_trie)),
            "null" => self.g.add(Node::Lits(self.g.null_trie)),
            "array" => {
                let items = match get("items") {
                    Some(i) => self.compile(i, depth + 1)?,
                    None => self.g.any,
                };
                let (min, max) = (count("minItems", 0), count("maxItems", u32::MAX));
                if min > max {
                    return Err(SchemaError(format!(
                        "minItems {min} exceeds maxItems {max}"
                    )));
                }
                self.g.add(Node::Array { items, min, max })
            }
            "object" => self.compile_object(obj, depth)?,
            other => return Err(SchemaError(format!("unknown type {other:?}"))),
        })
    }

    fn compile_object(
        &mut self,
        obj: &[(String, OrderedJson)],
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        let get = |k: &str| obj.iter().find(|(kk, _)| kk == k).map(|(_, v)| v);
        let props = match get("properties") {
            Some(OrderedJson::Object(p)) if !p.is_empty() => p,
            Some(OrderedJson::Object(_)) | None => {
                let values = match get("additionalProperties") {
                    Some(s @ OrderedJson::Object(_)) => self.compile(s, depth + 1)?,
                    _ => self.g.any,
                };
                return Ok(self.g.add(Node::FreeObject { values }));
            }
            Some(_) => return Err(SchemaError("properties must be an object".into())),
        };
        if props.len() > MAX_PROPS {
            return Err(SchemaError(format!(
                "an object may declare at most {MAX_PROPS} properties"
            )));
        }
        let required: Vec<&str> = match get("required") {
            Some(OrderedJson::Array(r)) => r.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        for r in &required {
            if !props.iter().any(|(k, _)| k == r) {
                return Err(SchemaError(format!(
                    "required property {r:?} is not declared in properties"
                )));
            }
        }
        let mut out = Vec::new();
        for (key, schema) in props {
            let node = self.compile(schema, depth + 1)?;
            out.push(Prop {
                key_json: serde_json::Value::String(key.clone())
                    .to_string()
                    .into_bytes(),
                node,
                required: required.contains(&key.as_str()),
            });
        }
        let mut key_sets = Vec::with_capacity(out.len());
        for i in 0..out.len() {
            let end = (i..out.len())
                .find(|&j| out[j].required)
                .unwrap_or(out.len() - 1);
            // Literal index = property index, so the matcher knows which key it read.
            let mut trie = Trie::build(&[]);
            for (j, p) in out.iter().enumerate().take(end + 1).skip(i) {
                trie.insert(&p.key_json, j as u32);
            }
            self.g.tries.push(trie);
            key_sets.push((self.g.tries.len() - 1) as TrieId);
        }
        self.g.objects.push(Object {
            props: out,
            key_sets,
        });
        let id = (self.g.objects.len() - 1) as ObjId;
        Ok(self.g.add(Node::Object(id)))
    }

    fn compile_ref(&mut self, r: &OrderedJson, depth: usize) -> Result<NodeId, SchemaError> {
        let path = r
            .as_str()
            .ok_or_else(|| SchemaError("$ref must be a string".into()))?
            .to_string();
        let rest = path.strip_prefix("#/").ok_or_else(|| {
            SchemaError(format!(
                "only local $refs (#/...) are supported, got {path:?}"
            ))
        })?;
        if self.ref_stack.contains(&path) {
            return Err(SchemaError(format!(
                "recursive $ref {path:?} is not supported"
            )));
        }
        let mut target = self.root;
        for seg in rest.split('/') {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            target = target
                .get(&seg)
                .ok_or_else(|| SchemaError(format!("$ref {path:?} points nowhere")))?;
        }
        self.ref_stack.push(path);
        let n = self.compile(target, depth + 1);
        self.ref_stack.pop();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(s: &str) -> OrderedJson {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn trie_shortest_and_indices() {
        let t = Trie::build(&[
            b"\"red\"".to_vec(),
            b"\"green\"".to_vec(),
            b"1".to_vec(),
            b"12".to_vec(),
        ]);
        assert_eq!(t.shortest_completion(0), (b"1".to_vec(), 2));
        let at = t.step(0, b'"').unwrap();
        assert_eq!(t.shortest_completion(at), (b"red\"".to_vec(), 0));
        let one = t.step(0, b'1').unwrap();
        assert_eq!(t.nodes[one as usize].terminal, Some(2));
    }

    #[test]
    fn compiles_objects_with_key_sets() {
        let g = Grammar::from_schema(&schema(
            r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"},"c":{"type":"boolean"}},"required":["b"]}"#,
        ))
        .unwrap();
        let Node::Object(o) = g.nodes[g.root as usize] else {
            panic!("root is {:?}", g.nodes[g.root as usize])
        };
        let obj = &g.objects[o as usize];
        assert_eq!(obj.props.len(), 3);
        assert!(!obj.props[0].required && obj.props[1].required);
        // From 0 the next key may be "a" or "b" (b is required, so c cannot come first).
        let t = &g.tries[obj.key_sets[0] as usize];
        let q = t.step(0, b'"').unwrap();
        assert!(
            t.step(q, b'a').is_some() && t.step(q, b'b').is_some() && t.step(q, b'c').is_none()
        );
        let mut min = Vec::new();
        g.min_value(g.root, &mut min);
        assert_eq!(String::from_utf8(min).unwrap(), r#"{"b":0}"#);
    }

    #[test]
    fn refs_unions_and_errors() {
        let s = schema(
            r##"{"$defs":{"P":{"type":"object","properties":{"x":{"type":"number"}},"required":["x"]}},"type":"array","items":{"$ref":"#/$defs/P"},"minItems":2}"##,
        );
        let g = Grammar::from_schema(&s).unwrap();
        let mut min = Vec::new();
        g.min_value(g.root, &mut min);
        assert_eq!(String::from_utf8(min).unwrap(), r#"[{"x":0},{"x":0}]"#);
        let u = Grammar::from_schema(&schema(r#"{"type":["string","null"]}"#)).unwrap();
        assert!(
            u.can_start(u.root, b'"') && u.can_start(u.root, b'n') && !u.can_start(u.root, b'1')
        );
        assert!(Grammar::from_schema(&schema(r##"{"$defs":{"N":{"type":"object","properties":{"n":{"$ref":"#/$defs/N"}}}},"$ref":"#/$defs/N"}"##)).is_err());
        assert!(Grammar::from_schema(&schema(
            r#"{"type":"object","properties":{"a":{}},"required":["z"]}"#
        ))
        .is_err());
        assert!(Grammar::from_schema(&schema(r#"{"type":"wat"}"#)).is_err());
        assert!(Grammar::from_schema(&schema(r#"{"$ref":"http://x/y"}"#)).is_err());
        assert!(Grammar::from_schema(&schema(r#"{"enum":[]}"#)).is_err());
    }

    #[test]
    fn tool_call_envelope() {
        let tools = vec![
            (
                "get_weather".to_string(),
                schema(
                    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#,
                ),
            ),
            ("noop".to_string(), OrderedJson::Null),
        ];
        let g = Grammar::tool_call(&tools, "name", "arguments").unwrap();
        let mut min = Vec::new();
        g.min_value(g.root, &mut min);
        assert_eq!(
            String::from_utf8(min).unwrap(),
            r#"{"name":"noop","arguments":{}}"#
        );
        assert!(Grammar::tool_call(&[], "name", "arguments").is_err());
    }
}
