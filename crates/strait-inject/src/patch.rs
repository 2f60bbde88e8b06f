//! RFC 6902 JSON Patch: the operations injection emits, and an interpreter for them.
//!
//! [`Patcher`] changes a document and records each change as an operation, so the patch the
//! webhook returns and the mutated pod `strait inject` prints come from the same steps.
//! [`apply`] replays a patch the way the API server does (tests check that replaying the
//! serialised patch on the original pod gives the mutated pod).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Adds a member, inserts into an array (`-` appends), or replaces a member.
    Add {
        /// JSON pointer.
        path: String,
        /// The value.
        value: Value,
    },
    /// Removes a member or an array element.
    Remove {
        /// JSON pointer.
        path: String,
    },
    /// Replaces an existing value.
    Replace {
        /// JSON pointer.
        path: String,
        /// The value.
        value: Value,
    },
}

/// Escapes a key for a JSON pointer (`/` → `~1`, `~` → `~0`).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> Result<(Vec<String>, String), String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: {t:?} does not exist"))?;
    }
    Ok(cur)
}

fn apply_one(doc: &mut Value, op: &Op) -> Result<(), String> {
    match op {
        Op::Add { path, value } => {
            let (tokens, last) = split(path)?;
            match parent_mut(doc, &tokens, path)? {
                Value::Object(m) => {
                    m.insert(last, value.clone());
                }
                Value::Array(a) => {
                    let i = if last == "-" {
                        a.len()
                    } else {
                        last.parse::<usize>()
                            .ok()
                            .filter(|i| *i <= a.len())
                            .ok_or_else(|| format!("{path}: index out of range"))?
                    };
                    a.insert(i, value.clone());
                }
                _ => return Err(format!("{path}: parent is not a container")),
            }
        }
        Op::Remove { path } => {
            let (tokens, last) = split(path)?;
            match parent_mut(doc, &tokens, path)? {
                Value::Object(m) => {
                    m.remove(&last)
                        .ok_or_else(|| format!("{path}: nothing to remove"))?;
                }
                Value::Array(a) => {
                    let i = last
                        .parse::<usize>()
                        .ok()
                        .filter(|i| *i < a.len())
                        .ok_or_else(|| format!("{path}: index out of range"))?;
                    a.remove(i);
                }
                _ => return Err(format!("{path}: parent is not a container")),
            }
        }
        Op::Replace { path, value } => {
            let (tokens, last) = split(path)?;
            let slot = match parent_mut(doc, &tokens, path)? {
                Value::Object(m) => m.get_mut(&last),
                Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| format!("{path}: nothing to replace"))?;
            *slot = value.clone();
        }
    }
    Ok(())
}

/// Applies `ops` to a copy of `doc`, as the API server does (all or nothing).
pub fn apply(doc: &Value, ops: &[Op]) -> Result<Value, String> {
    let mut out = doc.clone();
    for op in ops {
        apply_one(&mut out, op)?;
    }
    Ok(out)
}

/// A document being changed, with the operations that changed it.
#[derive(Debug, Clone)]
pub struct Patcher {
    doc: Value,
    ops: Vec<Op>,
}

impl Patcher {
    /// Starts from `doc`.
    pub fn new(doc: Value) -> Patcher {
        Patcher {
            doc,
            ops: Vec::new(),
        }
    }

    /// The document as changed so far.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Records and applies one operation. Operations built by the injector always apply;
    /// an error here is a bug in the injector, reported as such.
    pub fn push(&mut self, op: Op) -> crate::Result<()> {
        apply_one(&mut self.doc, &op)
            .map_err(|e| crate::Error::Pod(format!("internal patch: {e}")))?;
        self.ops.push(op);
        Ok(())
    }

    /// `add`.
    pub fn add(&mut self, path: impl Into<String>, value: Value) -> crate::Result<()> {
        self.push(Op::Add {
            path: path.into(),
            value,
        })
    }

    /// `remove`.
    pub fn remove(&mut self, path: impl Into<String>) -> crate::Result<()> {
        self.push(Op::Remove { path: path.into() })
    }

    /// Adds `key: value` to the object at `map` (a pointer), creating the object when
    /// absent; replaces the member when present.
    pub fn set_member(&mut self, map: &str, key: &str, value: Value) -> crate::Result<()> {
        let exists = self.doc.pointer(map).is_some_and(Value::is_object);
        if exists {
            self.add(format!("{map}/{}", escape(key)), value)
        } else {
            let mut m = serde_json::Map::new();
            m.insert(key.to_string(), value);
            self.add(map, Value::Object(m))
        }
    }

    /// Inserts `value` at `index` of the array at `array` (a pointer; `None` appends),
    /// creating the array when absent.
    pub fn insert(&mut self, array: &str, index: Option<usize>, value: Value) -> crate::Result<()> {
        match self.doc.pointer(array).and_then(Value::as_array) {
            Some(a) => {
                let at = match index {
                    Some(i) if i < a.len() => i.to_string(),
                    _ => "-".to_string(),
                };
                self.add(format!("{array}/{at}"), value)
            }
            None => self.add(array, Value::Array(vec![value])),
        }
    }

    /// The document and the operations.
    pub fn finish(self) -> (Value, Vec<Op>) {
        (self.doc, self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_apply_like_rfc6902() {
        let doc = json!({"a": {"b/c": 1}, "l": [1, 2]});
        let ops = vec![
            Op::Add {
                path: "/a/b~1c".into(),
                value: json!(2),
            },
            Op::Add {
                path: "/l/0".into(),
                value: json!(0),
            },
            Op::Add {
                path: "/l/-".into(),
                value: json!(3),
            },
            Op::Remove {
                path: "/l/1".into(),
            },
            Op::Replace {
                path: "/a".into(),
                value: json!({"x": "~"}),
            },
            Op::Add {
                path: "/a/x~0y".into(),
                value: json!(true),
            },
        ];
        let out = apply(&doc, &ops).expect("applies");
        assert_eq!(out, json!({"a": {"x": "~", "x~y": true}, "l": [0, 2, 3]}));
        let text = serde_json::to_string(&ops[0]).expect("json");
        assert_eq!(text, r#"{"op":"add","path":"/a/b~1c","value":2}"#);
        assert!(
            apply(
                &doc,
                &[Op::Remove {
                    path: "/nope".into()
                }]
            )
            .is_err()
        );
        assert!(
            apply(
                &doc,
                &[Op::Add {
                    path: "/l/9".into(),
                    value: json!(1)
                }]
            )
            .is_err()
        );
        assert!(
            apply(
                &doc,
                &[Op::Add {
                    path: "x".into(),
                    value: json!(1)
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn patcher_creates_what_is_missing() {
        let mut p = Patcher::new(json!({"metadata": {}}));
        p.set_member("/metadata/labels", "a/b", json!("1"))
            .expect("label");
        p.set_member("/metadata/labels", "c", json!("2"))
            .expect("label");
        p.insert("/list", Some(3), json!(1))
            .expect("creates the array");
        p.insert("/list", Some(0), json!(0)).expect("inserts first");
        let (doc, ops) = p.finish();
        assert_eq!(doc["metadata"]["labels"], json!({"a/b": "1", "c": "2"}));
        assert_eq!(doc["list"], json!([0, 1]));
        assert_eq!(ops.len(), 4);
        assert_eq!(apply(&json!({"metadata": {}}), &ops).expect("replays"), doc);
    }
}
