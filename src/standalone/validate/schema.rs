//! The OpenAPI v3 schema of a CRD, checked with a JSON-schema validator, and its violations
//! written as the API server writes them (`spec.appId: Invalid value: "shop": spec.appId in body
//! should match '...'`).

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use super::{FieldPath, render, type_name};

/// Compiles a CRD's `openAPIV3Schema` as a draft-4 JSON schema (the dialect OpenAPI v3.0 is
/// built on), with `nullable` spelled as JSON schema spells it.
pub(super) fn compile(
    openapi: &Value,
) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        // `int32`, `double`, ...: OpenAPI's formats only describe; the rules check the rest.
        .should_validate_formats(false)
        .build(&json_schema(openapi))
}

/// `openapi` with `nullable: true` as a `null` type (and enum value), the one keyword of
/// OpenAPI v3.0 that JSON schema does not read the same way. `x-kubernetes-*` keywords are
/// unknown to JSON schema and ignored by it; [`super`] checks those.
fn json_schema(openapi: &Value) -> Value {
    let Some(fields) = openapi.as_object() else {
        return openapi.clone();
    };
    let mut schema = serde_json::Map::new();
    for (keyword, value) in fields {
        let converted = match keyword.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, property)| (name.clone(), json_schema(property)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" => json_schema(value),
            "allOf" | "anyOf" | "oneOf" => {
                Value::Array(value.as_array().into_iter().flatten().map(json_schema).collect())
            }
            // Kept as data: a default or an example is not a schema.
            _ => value.clone(),
        };
        schema.insert(keyword.clone(), converted);
    }
    if fields.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(single)) = schema.get("type") {
            let types = Value::Array(vec![Value::String(single.clone()), "null".into()]);
            schema.insert("type".to_owned(), types);
        }
        if let Some(Value::Array(options)) = schema.get_mut("enum") {
            options.push(Value::Null);
        }
    }
    Value::Object(schema)
}

/// Every schema violation of `object`, as the API server words it.
pub(super) fn violations(checker: &jsonschema::Validator, object: &Value) -> Vec<String> {
    checker
        .iter_errors(object)
        .map(|error| {
            let path = error
                .instance_path()
                .segments()
                .fold(FieldPath::default(), |path, segment| match segment {
                    jsonschema::paths::LocationSegment::Property(name) => path.child(&name),
                    jsonschema::paths::LocationSegment::Index(index) => path.index(index),
                });
            let instance: &Value = error.instance();
            message(error.kind(), &path, instance)
                .unwrap_or_else(|| format!("{path}: Invalid value: {}: {error}", render(instance)))
        })
        .collect()
}

/// The API server's wording of one violation (kube-openapi's validation errors), for the
/// keywords the CRDs use.
fn message(kind: &ValidationErrorKind, path: &FieldPath, value: &Value) -> Option<String> {
    let shown = render(value);
    let length = || value.as_array().map_or(0, Vec::len);
    Some(match kind {
        ValidationErrorKind::Required { property } => {
            format!(
                "{}: Required value",
                path.child(property.as_str().unwrap_or_default())
            )
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(single) => single.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .filter(|t| t != "null")
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let actual = type_name(value);
            format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
            )
        }
        ValidationErrorKind::Enum { options } => {
            let supported: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .filter(|option| !option.is_null())
                .map(render)
                .collect();
            format!(
                "{path}: Unsupported value: {shown}: supported values: {}",
                supported.join(", ")
            )
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("{path}: Invalid value: {shown}: {path} in body should match '{pattern}'")
        }
        ValidationErrorKind::MinItems { limit } => format!(
            "{path}: Invalid value: {}: {path} in body should have at least {limit} items",
            length()
        ),
        ValidationErrorKind::MaxItems { limit } => {
            format!("{path}: Too many: {}: must have at most {limit} items", length())
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("{path}: Invalid value: {shown}: {path} in body should be at least {limit} chars long")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("{path}: Too long: may not be more than {limit} bytes")
        }
        ValidationErrorKind::Minimum { limit } => format!(
            "{path}: Invalid value: {shown}: {path} in body should be greater than or equal to {}",
            render(limit)
        ),
        ValidationErrorKind::Maximum { limit } => format!(
            "{path}: Invalid value: {shown}: {path} in body should be less than or equal to {}",
            render(limit)
        ),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!(
            "{path}: Invalid value: {shown}: {path} in body should be greater than {}",
            render(limit)
        ),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!(
            "{path}: Invalid value: {shown}: {path} in body should be less than {}",
            render(limit)
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nullable_becomes_a_null_type_and_enum_value() {
        let openapi = json!({"type": "object", "properties": {
            "mode": {"type": "string", "nullable": true, "enum": ["a", "b"]},
            "count": {"type": "integer", "maximum": 3.0}
        }});
        let checker = compile(&openapi).unwrap();
        assert!(violations(&checker, &json!({"mode": null})).is_empty());
        assert_eq!(
            violations(&checker, &json!({"mode": "c", "count": 4})),
            [
                "count: Invalid value: 4: count in body should be less than or equal to 3",
                "mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            ]
        );
        assert_eq!(
            violations(&checker, &json!({"count": "x"})),
            ["count: Invalid value: \"string\": count in body must be of type integer: \"string\""]
        );
    }
}
