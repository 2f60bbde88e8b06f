//! JSON Schema (as schemars writes it) to the OpenAPI v3 subset Kubernetes accepts in a CRD,
//! as a *structural* schema: every `$ref` inlined, `Option`'s `anyOf [T, null]` folded into
//! `T` (an absent or null field is pruned by the API server), a `oneOf` of constants turned
//! into an `enum`, Rust's unsigned formats into bounded integers, defaults dropped (the API
//! server would write them into every stored object), and nothing but the keywords the API
//! server knows.
//!
//! Also here, for the tests and for `codegen` itself: a check that a schema is structural, and
//! a validator with the API server's semantics for the keywords used (type, enum, required,
//! bounds, pattern, nested properties, maps and lists), reporting errors the way `kubectl`
//! shows them (`spec.http[0].route[0].destination.host: Required value`).

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

/// The keywords a CRD schema may use here (a subset of Kubernetes' `JSONSchemaProps`).
const KEYWORDS: &[&str] = &[
    "description",
    "type",
    "format",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
];

/// The formats the API server knows.
const FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "duration",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Converts a schemars root schema into a structural schema.
pub fn structural(root: &Value) -> anyhow::Result<Value> {
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut stack = Vec::new();
    let mut schema = convert(root, &defs, &mut stack, "")?;
    fold_values(&mut schema);
    Ok(schema)
}

/// Appends the documentation of enum values to the description, once every field has its
/// final description (a field's own, or its type's).
fn fold_values(v: &mut Value) {
    let Some(m) = v.as_object_mut() else {
        return;
    };
    if let Some(Value::String(values)) = m.remove("x-values") {
        let d = m
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let d = if d.is_empty() {
            values
        } else {
            format!("{d}\n\n{values}")
        };
        m.insert("description".into(), Value::String(d));
    }
    for key in ["properties"] {
        if let Some(Value::Object(props)) = m.get_mut(key) {
            props.values_mut().for_each(fold_values);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = m.get_mut(key) {
            fold_values(child);
        }
    }
}

fn convert(
    node: &Value,
    defs: &Map<String, Value>,
    stack: &mut Vec<String>,
    at: &str,
) -> anyhow::Result<Value> {
    let obj = match node {
        // `true` accepts anything: an opaque value.
        Value::Bool(true) => return Ok(json!({"x-kubernetes-preserve-unknown-fields": true})),
        Value::Object(o) => o,
        other => bail!("{at}: unsupported schema {other}"),
    };
    let mut out = Map::new();
    // A reference: the definition, with this node's own keywords (a field's description) on
    // top.
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .with_context(|| format!("{at}: reference {r} outside $defs"))?;
        if stack.iter().any(|s| s == name) {
            bail!("{at}: {name} contains itself; a structural schema cannot say so");
        }
        let def = defs
            .get(name)
            .with_context(|| format!("{at}: no definition {name}"))?;
        stack.push(name.to_string());
        let resolved = convert(def, defs, stack, at)?;
        stack.pop();
        if let Value::Object(m) = resolved {
            out = m;
        }
    }
    for key in ["anyOf", "oneOf"] {
        let Some(branches) = obj.get(key).and_then(Value::as_array) else {
            continue;
        };
        let non_null: Vec<&Value> = branches
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if non_null.iter().all(|b| b.get("const").is_some()) && !non_null.is_empty() {
            // A C-like enum whose variants are documented: an `enum`, their documentation
            // folded into the description.
            let values: Vec<Value> = non_null
                .iter()
                .filter_map(|b| b.get("const"))
                .cloned()
                .collect();
            let ty = non_null[0].get("type").cloned().unwrap_or(json!("string"));
            let docs: Vec<String> = non_null
                .iter()
                .filter_map(|b| {
                    let v = b.get("const")?.as_str()?;
                    let d = b.get("description")?.as_str()?;
                    Some(format!("- `{v}`: {}", d.replace('\n', " ")))
                })
                .collect();
            out.insert("type".into(), ty);
            out.insert("enum".into(), Value::Array(values));
            if !docs.is_empty() {
                out.insert("x-values".into(), Value::String(docs.join("\n")));
            }
        } else if non_null.len() == 1 {
            // `Option<T>`: T (absent and null are the same to the API server).
            if let Value::Object(m) = convert(non_null[0], defs, stack, at)? {
                out.extend(m);
            }
        } else {
            bail!("{at}: {key} with several schemas cannot be structural");
        }
    }
    if obj.contains_key("allOf") || obj.contains_key("not") {
        bail!("{at}: allOf/not cannot be structural");
    }
    for (key, value) in obj {
        match key.as_str() {
            "$ref" | "anyOf" | "oneOf" | "$defs" | "$schema" | "title" | "default" | "examples"
            | "deprecated" | "readOnly" | "writeOnly" | "uniqueItems" => {}
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "type" => {
                let ty = match value {
                    Value::Array(types) => {
                        let t: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                        match t.as_slice() {
                            [one] => (*one).clone(),
                            _ => bail!("{at}: a value of several types cannot be structural"),
                        }
                    }
                    t => t.clone(),
                };
                out.insert("type".into(), ty);
            }
            "format" => {}
            "additionalProperties" => match value {
                Value::Bool(false) => {} // Unknown fields are pruned by the API server anyway.
                Value::Bool(true) => {
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                }
                schema => {
                    let s = convert(schema, defs, stack, &format!("{at}.*"))?;
                    out.insert("additionalProperties".into(), s);
                }
            },
            "properties" => {
                let mut props = Map::new();
                for (name, p) in value.as_object().into_iter().flatten() {
                    props.insert(
                        name.clone(),
                        convert(p, defs, stack, &format!("{at}.{name}"))?,
                    );
                }
                out.insert("properties".into(), Value::Object(props));
            }
            "items" => {
                out.insert(
                    "items".into(),
                    convert(value, defs, stack, &format!("{at}[]"))?,
                );
            }
            "description" => {
                // The field's own words win over its type's.
                out.insert(key.clone(), value.clone());
            }
            k if KEYWORDS.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            other => bail!("{at}: keyword {other} is not supported in a CRD schema"),
        }
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str) {
        apply_format(&mut out, f);
    }
    if out.get("type") == Some(&json!("object"))
        && !out.contains_key("properties")
        && !out.contains_key("additionalProperties")
    {
        // An object of unknown shape.
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    Ok(Value::Object(out))
}

/// Rust's integer formats as bounded integers in formats the API server knows.
fn apply_format(out: &mut Map<String, Value>, format: &str) {
    let (fmt, min, max): (&str, Option<i64>, Option<i64>) = match format {
        "uint8" => ("int32", Some(0), Some(i64::from(u8::MAX))),
        "uint16" => ("int32", Some(0), Some(i64::from(u16::MAX))),
        "uint32" | "uint" => ("int64", Some(0), Some(i64::from(u32::MAX))),
        "uint64" => ("int64", Some(0), None),
        "int8" => ("int32", Some(i64::from(i8::MIN)), Some(i64::from(i8::MAX))),
        "int16" => (
            "int32",
            Some(i64::from(i16::MIN)),
            Some(i64::from(i16::MAX)),
        ),
        "int" => ("int64", None, None),
        f if FORMATS.contains(&f) => (f, None, None),
        _ => return,
    };
    out.insert("format".into(), json!(fmt));
    if let Some(min) = min {
        let current = out.get("minimum").and_then(Value::as_i64);
        out.insert("minimum".into(), json!(current.map_or(min, |c| c.max(min))));
    }
    if let Some(max) = max {
        let current = out.get("maximum").and_then(Value::as_i64);
        out.insert("maximum".into(), json!(current.map_or(max, |c| c.min(max))));
    }
}

/// The ways `schema` is not a structural schema the API server accepts (empty: it is).
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, "", &mut out);
    out
}

fn check(node: &Value, at: &str, out: &mut Vec<String>) {
    let at_ = if at.is_empty() { "<root>" } else { at };
    let Some(obj) = node.as_object() else {
        out.push(format!("{at_}: not a schema object"));
        return;
    };
    for key in obj.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            out.push(format!("{at_}: keyword {key} not allowed"));
        }
    }
    let opaque = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        Some(t) if TYPES.contains(&t) => {}
        Some(t) => out.push(format!("{at_}: type {t} is not a Kubernetes type")),
        None if opaque => {}
        None => out.push(format!("{at_}: no type")),
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str)
        && !FORMATS.contains(&f)
    {
        out.push(format!("{at_}: format {f} unknown to the API server"));
    }
    for (key, v) in obj {
        match key.as_str() {
            "minimum" | "maximum" | "minLength" | "maxLength" | "minItems" | "maxItems"
            | "minProperties" | "maxProperties"
                if !v.is_number() =>
            {
                out.push(format!("{at_}: {key} is not a number"));
            }
            "nullable" | "x-kubernetes-preserve-unknown-fields" | "x-kubernetes-int-or-string"
                if !v.is_boolean() =>
            {
                out.push(format!("{at_}: {key} is not a boolean"));
            }
            _ => {}
        }
    }
    if let Some(values) = obj.get("enum") {
        match values.as_array() {
            Some(vals) if !vals.is_empty() => {
                for v in vals {
                    if let Some(t) = ty
                        && !type_matches(t, v)
                    {
                        out.push(format!("{at_}: enum value {v} is not of type {t}"));
                    }
                }
            }
            _ => out.push(format!("{at_}: enum is not a non-empty list")),
        }
    }
    let props = obj.get("properties").and_then(Value::as_object);
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{at_}: properties and additionalProperties together"
        ));
    }
    if (props.is_some() || obj.contains_key("additionalProperties")) && ty != Some("object") {
        out.push(format!("{at_}: properties on a non-object"));
    }
    if let Some(required) = obj.get("required") {
        for r in required.as_array().into_iter().flatten() {
            let name = r.as_str().unwrap_or_default();
            if !props.is_some_and(|p| p.contains_key(name)) {
                out.push(format!("{at_}: required {name} is not a property"));
            }
        }
    }
    for (name, p) in props.into_iter().flatten() {
        check(p, &join(at, name), out);
    }
    match obj.get("additionalProperties") {
        None => {}
        Some(s @ Value::Object(_)) => check(s, &format!("{at}[*]"), out),
        Some(_) => out.push(format!("{at_}: additionalProperties is not a schema")),
    }
    match (ty, obj.get("items")) {
        (Some("array"), Some(items @ Value::Object(_))) => check(items, &format!("{at}[*]"), out),
        (Some("array"), _) => out.push(format!("{at_}: an array needs one items schema")),
        (_, Some(_)) => out.push(format!("{at_}: items on a non-array")),
        _ => {}
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match (ty, v) {
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        ("number", Value::Number(_)) => true,
        _ => type_name(v) == ty,
    }
}

/// Validates `value` against a structural `schema` as the API server does, and returns its
/// complaints (`spec.hosts[0]: Invalid value: …`). `null` values are pruned, not refused;
/// unknown fields are pruned too, and not reported. (Used by the tests, which compare it with
/// strait's own validation.)
#[cfg(test)]
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    validate_at(schema, value, "", &mut out);
    out
}

#[cfg(test)]
fn validate_at(schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    let Some(s) = schema.as_object() else {
        return;
    };
    if let Some(ty) = s.get("type").and_then(Value::as_str)
        && !type_matches(ty, value)
    {
        let got = type_name(value);
        out.push(format!(
            "{at}: Invalid value: \"{got}\": {at} in body must be of type {ty}: \"{got}\""
        ));
        return;
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array)
        && !values.contains(value)
    {
        let supported: Vec<String> = values.iter().map(Value::to_string).collect();
        out.push(format!(
            "{at}: Unsupported value: {value}: supported values: {}",
            supported.join(", ")
        ));
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(n) = value.as_f64() {
        if let Some(min) = num("minimum")
            && n < min
        {
            out.push(format!("{at}: Invalid value: {value}: {at} in body should be greater than or equal to {min}"));
        }
        if let Some(max) = num("maximum")
            && n > max
        {
            out.push(format!(
                "{at}: Invalid value: {value}: {at} in body should be less than or equal to {max}"
            ));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as f64;
        if num("minLength").is_some_and(|m| len < m) || num("maxLength").is_some_and(|m| len > m) {
            out.push(format!(
                "{at}: Invalid value: {value}: length out of bounds"
            ));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(text) => out.push(format!(
                    "{at}: Invalid value: {value}: {at} in body should match '{p}'"
                )),
                Ok(_) => {}
                Err(e) => out.push(format!("{at}: pattern {p} is not a valid regex: {e}")),
            }
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as f64;
        if num("minItems").is_some_and(|m| len < m) || num("maxItems").is_some_and(|m| len > m) {
            out.push(format!("{at}: Invalid value: {len} items: out of bounds"));
        }
        if let Some(item) = s.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate_at(item, v, &format!("{at}[{i}]"), out);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        let len = fields.len() as f64;
        if num("minProperties").is_some_and(|m| len < m)
            || num("maxProperties").is_some_and(|m| len > m)
        {
            out.push(format!(
                "{at}: Too many: {len}: must have at most {} items",
                num("maxProperties").unwrap_or_default()
            ));
        }
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = r.as_str().unwrap_or_default();
            if fields.get(name).is_none_or(Value::is_null) {
                out.push(format!("{}: Required value", join(at, name)));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (name, v) in fields {
            if let Some(p) = props.and_then(|p| p.get(name)) {
                validate_at(p, v, &join(at, name), out);
            } else if let Some(extra @ Value::Object(_)) = s.get("additionalProperties") {
                validate_at(extra, v, &format!("{at}[{name}]"), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refs_and_documented_enums_become_structural() {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "T",
            "type": "object",
            "required": ["mode"],
            "properties": {
                "mode": {"description": "The mode.", "$ref": "#/$defs/Mode"},
                "port": {"anyOf": [{"$ref": "#/$defs/Port"}, {"type": "null"}]},
                "name": {"type": ["string", "null"], "default": null},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "$defs": {
                "Mode": {"oneOf": [
                    {"type": "string", "const": "A", "description": "First."},
                    {"type": "string", "const": "B", "description": "Second."},
                ]},
                "Port": {"type": "object", "properties": {
                    "number": {"type": "integer", "format": "uint32", "minimum": 0},
                }, "additionalProperties": false},
            },
        });
        let s = structural(&root).expect("structural");
        assert_eq!(structural_violations(&s), Vec::<String>::new());
        assert_eq!(s["properties"]["mode"]["enum"], json!(["A", "B"]));
        assert_eq!(
            s["properties"]["mode"]["description"],
            "The mode.\n\n- `A`: First.\n- `B`: Second."
        );
        assert_eq!(s["properties"]["name"], json!({"type": "string"}));
        let number = &s["properties"]["port"]["properties"]["number"];
        assert_eq!(
            *number,
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64})
        );
        assert!(
            s["properties"]["port"]
                .get("additionalProperties")
                .is_none()
        );
        assert!(s.get("$schema").is_none() && s.get("title").is_none());
    }

    #[test]
    fn what_cannot_be_structural_is_refused() {
        let union = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(structural(&union).is_err());
        let recursive = json!({"$ref": "#/$defs/A", "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}});
        assert!(structural(&recursive).is_err());
        let bad = json!({"type": "object", "properties": {"x": {"description": "no type"}}});
        assert_eq!(structural_violations(&bad), ["x: no type"]);
    }

    #[test]
    fn validation_reports_like_the_api_server() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "hosts": {"type": "array", "items": {"type": "string"}},
            "port": {"type": "object", "required": ["number"], "properties": {
                "number": {"type": "integer", "minimum": 0, "maximum": 65535}}},
            "mode": {"type": "string", "enum": ["A", "B"]},
            "timeout": {"type": "string", "pattern": "^[0-9]+s$"},
        }}}});
        let ok = json!({"spec": {"hosts": ["a"], "port": {"number": 80}, "mode": "A", "timeout": "5s", "extra": 1}});
        assert_eq!(validate(&schema, &ok), Vec::<String>::new());
        let bad = json!({"spec": {"hosts": [1], "port": {"number": 70000}, "mode": "C", "timeout": "5m"}});
        let errs = validate(&schema, &bad);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("spec.hosts[0]: Invalid value: \"integer\""));
        let missing = json!({"spec": {"port": {}}});
        assert_eq!(
            validate(&schema, &missing),
            ["spec.port.number: Required value"]
        );
    }
}
