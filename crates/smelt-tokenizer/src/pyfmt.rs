//! Python formatting for chat templates: what Hugging Face's Jinja environment produces for
//! `json.dumps` (its `tojson` filter), `str()` of values printed with `{{ }}`, and
//! `datetime.strftime`. Templates are written against that output, so prompts must match it.

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

// ---- json.dumps -----------------------------------------------------------------------------

/// Options of Python's `json.dumps` that templates use.
pub(crate) struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(s)`: newline and `s` repeated per level.
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl JsonOptions {
    /// Python's defaults for the separators depend on whether there is an indent.
    pub fn new(
        ensure_ascii: bool,
        indent: Option<String>,
        separators: Option<(String, String)>,
        sort_keys: bool,
    ) -> Self {
        let (item_sep, key_sep) = separators.unwrap_or_else(|| {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_owned(), ": ".to_owned())
        });
        JsonOptions {
            ensure_ascii,
            indent,
            item_sep,
            key_sep,
            sort_keys,
        }
    }
}

/// `json.dumps(value, ...)`.
pub(crate) fn to_json(v: &Value, o: &JsonOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_json(v, o, 0, &mut out)?;
    Ok(out)
}

fn newline_indent(o: &JsonOptions, level: usize, out: &mut String) {
    if let Some(ind) = &o.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(v: &Value, o: &JsonOptions, level: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&py_number(v)),
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(o, level, out, '[', ']', &items, |item, out| {
                write_json(item, o, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                entries.push((json_key(&key)?, value));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(o, level, out, '{', '}', &entries, |(k, val), out| {
                json_string(k, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                write_json(val, o, level + 1, out)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn write_container<T>(
    o: &JsonOptions,
    level: usize,
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    mut each: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        newline_indent(o, level + 1, out);
        each(item, out)?;
    }
    newline_indent(o, level, out);
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings (`1` -> `"1"`, `True` -> `"true"`, `None` -> `"null"`).
fn json_key(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_owned(),
        ValueKind::Number => py_number(k),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::None | ValueKind::Undefined => "null".to_owned(),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    })
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7F => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as Python prints it: integers plainly, floats as `repr(float)`.
fn py_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    match f64::try_from(v.clone()) {
        Ok(f) => py_float(f),
        Err(_) => v.to_string(),
    }
}

/// `repr(float)`: shortest round-trip digits, positional for exponents -4..16, else
/// scientific with a signed two-digit exponent.
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            format!(
                "{}.{}",
                &digits[..(exp + 1) as usize],
                &digits[(exp + 1) as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// Python's `str.isspace` for one character (Rust's notion plus the ASCII separators 0x1C-0x1F).
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

// ---- str() ----------------------------------------------------------------------------------

/// What Python's `str(value)` prints, for values printed with `{{ }}`.
pub(crate) fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::String => v.as_str().unwrap_or_default().to_owned(),
        ValueKind::Undefined => String::new(),
        _ => py_repr(v),
    }
}

/// Python's `repr(value)` (strings quoted, containers recursive).
fn py_repr(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => py_number(v),
        ValueKind::String => py_repr_str(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match v.try_iter() {
            Ok(it) => format!(
                "[{}]",
                it.map(|x| py_repr(&x)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => v.to_string(),
        },
        ValueKind::Map => match v.try_iter() {
            Ok(it) => {
                let parts: Vec<String> = it
                    .map(|k| {
                        format!(
                            "{}: {}",
                            py_repr(&k),
                            py_repr(&v.get_item(&k).unwrap_or_default())
                        )
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Err(_) => v.to_string(),
        },
        _ => v.to_string(),
    }
}

/// `repr(str)`: single quotes unless the text has a single quote and no double quote.
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

// ---- strftime -------------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC civil time.
pub(crate) struct DateTime {
    pub year: i64,
    pub month: u32, // 1..=12
    pub day: u32,   // 1..=31
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32, // 0 = Monday
    pub yday: u32,    // 1..=366
}

impl DateTime {
    /// The civil date of a Unix timestamp (UTC), by Howard Hinnant's days-to-civil algorithm.
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[(month - 1) as usize] + day + u32::from(leap && month > 2);
        DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            weekday: (days + 3).rem_euclid(7) as u32,
            yday,
        }
    }

    pub fn now_utc() -> DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        DateTime::from_unix(secs)
    }

    /// C `strftime` for the directives chat templates use; others are kept verbatim.
    pub fn strftime(&self, fmt: &str) -> String {
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(d) = chars.next() else {
                out.push('%');
                break;
            };
            let month = MONTHS[(self.month - 1) as usize];
            let wday = DAYS[self.weekday as usize];
            let h12 = if self.hour.is_multiple_of(12) {
                12
            } else {
                self.hour % 12
            };
            match d {
                'Y' => out.push_str(&self.year.to_string()),
                'y' => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                'm' => out.push_str(&format!("{:02}", self.month)),
                'd' => out.push_str(&format!("{:02}", self.day)),
                'e' => out.push_str(&format!("{:2}", self.day)),
                '-' => match chars.next() {
                    Some('d') => out.push_str(&self.day.to_string()),
                    Some('m') => out.push_str(&self.month.to_string()),
                    Some('H') => out.push_str(&self.hour.to_string()),
                    Some('I') => out.push_str(&h12.to_string()),
                    Some(o) => {
                        out.push_str("%-");
                        out.push(o);
                    }
                    None => out.push_str("%-"),
                },
                'B' => out.push_str(month),
                'b' | 'h' => out.push_str(&month[..3]),
                'A' => out.push_str(wday),
                'a' => out.push_str(&wday[..3]),
                'H' => out.push_str(&format!("{:02}", self.hour)),
                'I' => out.push_str(&format!("{h12:02}")),
                'M' => out.push_str(&format!("{:02}", self.minute)),
                'S' => out.push_str(&format!("{:02}", self.second)),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'j' => out.push_str(&format!("{:03}", self.yday)),
                'w' => out.push_str(&((self.weekday + 1) % 7).to_string()),
                'u' => out.push_str(&(self.weekday + 1).to_string()),
                'F' => out.push_str(&format!("{}-{:02}-{:02}", self.year, self.month, self.day)),
                'T' => out.push_str(&format!(
                    "{:02}:{:02}:{:02}",
                    self.hour, self.minute, self.second
                )),
                'Z' => out.push_str("UTC"),
                'z' => out.push_str("+0000"),
                '%' => out.push('%'),
                other => {
                    out.push('%');
                    out.push(other);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1.2345e20, "1.2345e+20"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(f), s, "{f}");
        }
    }

    #[test]
    fn json_dumps_defaults_and_indent() {
        let v = Value::from_serialize(
            serde_json::json!({"b": [1, 2.0, "é\n"], "a": {}, "c": null, "d": []}),
        );
        let o = JsonOptions::new(false, None, None, false);
        assert_eq!(
            to_json(&v, &o).unwrap(),
            r#"{"b": [1, 2.0, "é\n"], "a": {}, "c": null, "d": []}"#
        );
        let o = JsonOptions::new(true, Some("  ".into()), None, true);
        assert_eq!(
            to_json(&v, &o).unwrap(),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.0,\n    \"\\u00e9\\n\"\n  ],\n  \"c\": null,\n  \"d\": []\n}"
        );
    }

    #[test]
    fn str_of_values_is_pythonic() {
        let v = Value::from_serialize(serde_json::json!({"k": [true, null, "it's"]}));
        assert_eq!(py_str(&v), r#"{'k': [True, None, "it's"]}"#);
        assert_eq!(py_str(&Value::from("plain")), "plain");
    }

    #[test]
    fn civil_dates_and_strftime() {
        let d = DateTime::from_unix(0);
        assert_eq!(
            d.strftime("%Y-%m-%d %H:%M:%S %A %j"),
            "1970-01-01 00:00:00 Thursday 001"
        );
        // 2024-02-29 12:34:56 UTC, a Thursday in a leap year.
        let d = DateTime::from_unix(1_709_210_096);
        assert_eq!(
            d.strftime("%d %b %Y, %a %I:%M %p, day %j"),
            "29 Feb 2024, Thu 12:34 PM, day 060"
        );
        assert_eq!(d.strftime("%-d %B %y %%"), "29 February 24 %");
    }
}
