//! Reads `proxy.yaml` and reports every problem as `file:line:column: field: message`.
//!
//! This is the only file that calls serde_yaml (archived upstream: moving to
//! a maintained fork must stay a one-file change). serde_yaml knows a
//! location only while it deserializes, so errors found afterwards by
//! `validate.rs` are located by deserializing the text a second time with a
//! seed that walks the field path and stops with a marker error when it
//! reaches the field: that error carries the field's line and column.

use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::field::{FieldPath, Seg};
use super::schema::RawConfig;
use super::validate;
use super::{Config, ConfigError, Location};

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    let mut config = parse_str(&text, &path.display().to_string())?;
    config.source = Some(path.to_owned());
    config.source_digest = digest(text.as_bytes());
    Ok(config)
}

/// A digest of config file content, to tell whether a changed file really
/// has new content (the file watch compares it with what was loaded).
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (field, message) = describe_yaml_error(&inner.to_string(), &path);
        ConfigError::Invalid {
            origin: origin.to_owned(),
            // serde_yaml gives no location for some errors (a second document, say): point at the
            // second `---` if there is one, else at the top, so every error is file:line:column.
            location: inner
                .location()
                .map(|l| Location { line: l.line(), column: l.column() })
                .or_else(|| Some(second_document(text).unwrap_or(Location { line: 1, column: 1 }))),
            field,
            message,
        }
    })?;
    validate::validate(raw).map_err(|e| ConfigError::Invalid {
        origin: origin.to_owned(),
        location: locate(text, &e.path).or(Some(Location { line: 1, column: 1 })),
        field: e.field,
        message: e.message,
    })
}

/// Where a second YAML document starts (a `---` line after content), if anywhere.
fn second_document(text: &str) -> Option<Location> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            if seen_content {
                return Some(Location { line: i + 1, column: 1 });
            }
        } else if !t.trim_start().is_empty() && !t.trim_start().starts_with('#') {
            seen_content = true;
        }
    }
    None
}

/// Splits a serde_yaml message into (field path, message). serde_yaml
/// appends " at line L column C" (we print the location in front) and
/// prefixes its own, shorter path. A YAML syntax error has no meaningful
/// field: the path is wherever the parser happened to be.
fn describe_yaml_error(msg: &str, path: &str) -> (String, String) {
    let mut msg = msg.to_owned();
    while let Some(i) = msg.find(" at line ") {
        let rest = &msg[i + " at line ".len()..];
        let Some(col) = rest.find(" column ") else {
            break;
        };
        let digits = rest[col + " column ".len()..].bytes().take_while(u8::is_ascii_digit).count();
        let end = i + " at line ".len() + col + " column ".len() + digits;
        msg.replace_range(i..end, "");
    }
    if msg.contains("while parsing") || msg.contains("while scanning") {
        return (String::new(), format!("YAML syntax error: {msg}"));
    }
    let field = if path == "." { String::new() } else { path.to_owned() };
    let message = match msg.split_once(": ") {
        // serde_yaml's path stops at the enclosing map; ours names the field.
        Some((head, rest)) if !head.is_empty() && field.starts_with(head) => rest.to_owned(),
        _ => msg,
    };
    (field, message)
}

const FOUND: &str = "\u{0}sluice-locate-marker";

/// Finds the line and column of the value at `path` in `text`.
fn locate(text: &str, path: &FieldPath) -> Option<Location> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Seek { path: &path.0 }).deserialize(de) {
        Err(e) if e.to_string().contains(FOUND) => {
            e.location().map(|l| Location { line: l.line(), column: l.column() })
        }
        _ => None,
    }
}

/// Walks down `path`; at its end fails with the marker error.
struct Seek<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek { path: rest }).map(|_| ())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests;
