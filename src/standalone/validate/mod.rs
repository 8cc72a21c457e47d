//! Checking a document as the API server does before it stores it, so that `ota standalone`
//! refuses what `kubectl apply` refuses, with the same messages:
//! - nulls of non-nullable fields are pruned and the schema's defaults applied (the server
//!   checks the defaulted object);
//! - the generated CRD's OpenAPI schema ([`schema`]: patterns, enums, bounds, required fields);
//! - the list types (`x-kubernetes-list-type: set` and `map`: no duplicate entries);
//! - the CEL rules (`x-kubernetes-validations`, [`rules`]) at every level, and the transition
//!   rules (`oldSelf`) against the previous accepted version of the object, when there is one.
//!
//! The schemas come from the Rust types (`kube::CustomResourceExt::crd`), as `ota crds` renders
//! them, never from files read at run time.

mod rules;
mod schema;

use std::{collections::HashMap, fmt, sync::LazyLock};

use serde_json::Value;

/// A field path as the API server writes it (`spec.steps[0].setPercent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldPath(String);

impl FieldPath {
    fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// Why the validator could not be built from the generated CRDs (a bug of the CRD types, which a
/// unit test catches).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A CRD has no OpenAPI schema.
    #[error("the generated CRD {0} has no OpenAPI schema")]
    NoSchema(String),
    /// A CRD's schema is not a valid JSON schema.
    #[error("the schema of the CRD {crd} does not compile: {source}")]
    Schema {
        /// The CRD's name.
        crd: String,
        /// The JSON-schema compiler's error.
        source: jsonschema::ValidationError<'static>,
    },
    /// A CEL rule does not compile.
    #[error("the CEL rule {rule:?} of the CRD {crd} does not compile: {source}")]
    Rule {
        /// The CRD's name.
        crd: String,
        /// The rule.
        rule: String,
        /// The CEL compiler's error.
        source: RuleCompileError,
    },
}

/// Why a CEL rule does not compile.
#[derive(Debug, thiserror::Error)]
pub enum RuleCompileError {
    /// An extension of Kubernetes' CEL could not be declared.
    #[error(transparent)]
    Extension(#[from] cel::DeclarationError),
    /// The rule does not parse.
    #[error(transparent)]
    Parse(#[from] cel::ParseErrors),
}

/// Why the API server would refuse a document: its message is the server's
/// (`App.ota.dev "shop" is invalid: spec.appId: Invalid value: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The kind and group (`App.ota.dev`).
    pub group_kind: String,
    /// The object's name.
    pub name: String,
    /// Each violation, with its field path.
    pub causes: Vec<String>,
}

impl Invalid {
    /// The causes as the server lists them after "is invalid: ": the one cause, or all of them
    /// in brackets.
    pub fn causes_text(&self) -> String {
        match self.causes.as_slice() {
            [only] => only.clone(),
            causes => format!("[{}]", causes.join(", ")),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} is invalid: {}",
            self.group_kind,
            self.name,
            self.causes_text()
        )
    }
}

/// The checks of one kind.
struct KindSchema {
    /// `Kind.group`, as the server names it in messages.
    group_kind: String,
    /// The CRD's `openAPIV3Schema`.
    schema: Value,
    /// The same schema, compiled as a JSON schema.
    checker: jsonschema::Validator,
    /// Its CEL rules, compiled.
    rules: rules::Rules,
}

/// The checks of every kind of the operator.
pub struct Validator {
    kinds: HashMap<String, KindSchema>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

static SHARED: LazyLock<Validator> = LazyLock::new(|| {
    // The schemas are the program's own, generated from its types: one that does not compile is
    // a bug that `the_generated_crds_compile` catches before any release.
    Validator::new().expect("the generated CRDs compile into a validator")
});

impl Validator {
    /// Builds the checks of the four kinds from their generated CRDs.
    pub fn new() -> Result<Self, BuildError> {
        let mut kinds = HashMap::new();
        for crd in crate::api::crds() {
            let crd_name = crd.metadata.name.clone().unwrap_or_default();
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|version| version.schema.as_ref())
                .and_then(|schema| schema.open_api_v3_schema.as_ref())
                .and_then(|schema| serde_json::to_value(schema).ok())
                .ok_or_else(|| BuildError::NoSchema(crd_name.clone()))?;
            let checker = schema::compile(&schema).map_err(|source| BuildError::Schema {
                crd: crd_name.clone(),
                source,
            })?;
            let rules = rules::Rules::compile(&schema).map_err(|uncompiled| BuildError::Rule {
                crd: crd_name.clone(),
                rule: uncompiled.rule,
                source: uncompiled.cause,
            })?;
            let kind = crd.spec.names.kind.clone();
            kinds.insert(
                kind.clone(),
                KindSchema {
                    group_kind: format!("{kind}.{}", crd.spec.group),
                    schema,
                    checker,
                    rules,
                },
            );
        }
        Ok(Self { kinds })
    }

    /// The validator of the process, built once.
    pub fn shared() -> &'static Self {
        &SHARED
    }

    /// Checks `object` (a whole document: apiVersion, kind, metadata, spec) as the API server
    /// would on create, or, with `old` (the version it accepted before), on update. Kinds that
    /// are not the operator's are not checked here.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Result<(), Invalid> {
        let Some(kind) = object["kind"].as_str().and_then(|k| self.kinds.get(k)) else {
            return Ok(());
        };
        let object = prepared(&kind.schema, object);
        let old = old.map(|old| prepared(&kind.schema, old));
        let mut causes = schema::violations(&kind.checker, &object);
        list_violations(&kind.schema, &object, &FieldPath::default(), &mut causes);
        // A rule that cannot be evaluated on a value of the wrong shape says nothing new: the
        // schema violation above is the message.
        let report_rule_errors = causes.is_empty();
        kind.rules.check(
            &kind.schema,
            &object,
            old.as_ref(),
            report_rule_errors,
            &mut causes,
        );
        if causes.is_empty() {
            Ok(())
        } else {
            Err(Invalid {
                group_kind: kind.group_kind.clone(),
                name: object["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                causes,
            })
        }
    }
}

/// The object as the API server checks it: without status (the status subresource's), nulls of
/// non-nullable fields pruned, and the schema's defaults applied.
fn prepared(schema: &Value, object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(fields) = object.as_object_mut() {
        fields.remove("status");
    }
    apply_defaults(schema, &mut object);
    object
}

fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    let nullable = property["nullable"].as_bool() == Some(true);
                    if !nullable && fields.get(name).is_some_and(Value::is_null) {
                        fields.remove(name);
                    }
                    if !fields.contains_key(name)
                        && let Some(default) = property.get("default")
                    {
                        fields.insert(name.clone(), default.clone());
                    }
                    if let Some(field) = fields.get_mut(name) {
                        apply_defaults(property, field);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for field in fields.values_mut() {
                    apply_defaults(&schema["additionalProperties"], field);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(&schema["items"], item);
            }
        }
        _ => {}
    }
}

/// Duplicate entries of `set` and `map` lists, which the server refuses.
fn list_violations(schema: &Value, value: &Value, path: &FieldPath, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                if let Some(property) = schema["properties"].get(name) {
                    list_violations(property, field, &path.child(name), out);
                } else if schema["additionalProperties"].is_object() {
                    list_violations(&schema["additionalProperties"], field, &path.key(name), out);
                }
            }
        }
        Value::Array(items) => {
            match schema["x-kubernetes-list-type"].as_str() {
                Some("set") => {
                    for (index, item) in items.iter().enumerate() {
                        if items[..index].contains(item) {
                            out.push(format!(
                                "{}: Duplicate value: {}",
                                path.index(index),
                                render(item)
                            ));
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let key_of =
                        |item: &Value| -> Vec<Value> { keys.iter().map(|key| item[*key].clone()).collect() };
                    for (index, item) in items.iter().enumerate() {
                        let key = key_of(item);
                        if items[..index].iter().any(|earlier| key_of(earlier) == key) {
                            let shown: Vec<String> = keys
                                .iter()
                                .zip(&key)
                                .map(|(name, value)| format!("{name}={}", render(value)))
                                .collect();
                            out.push(format!(
                                "{}: Duplicate value: duplicate entries for key [{}]",
                                path.index(index),
                                shown.join(",")
                            ));
                        }
                    }
                }
                _ => {}
            }
            for (index, item) in items.iter().enumerate() {
                list_violations(&schema["items"], item, &path.index(index), out);
            }
        }
        _ => {}
    }
}

/// A value as the server shows it in a message: strings quoted, whole numbers without a
/// fraction (`1`, not `1.0`), the rest as JSON.
fn render(value: &Value) -> String {
    match value {
        Value::Number(number) => match number.as_f64() {
            Some(float) if number.is_f64() && float.fract() == 0.0 && float.abs() < 1e15 => {
                format!("{}", float as i64)
            }
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

/// The schema type of a value (`object`, `string`, ...), as the server names it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn app(spec: Value) -> Value {
        json!({"apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"}, "spec": spec})
    }

    #[test]
    fn the_generated_crds_compile() {
        let validator = Validator::new().unwrap();
        let mut kinds: Vec<&String> = validator.kinds.keys().collect();
        kinds.sort();
        assert_eq!(kinds, ["App", "Bundle", "Channel", "Rollout"]);
    }

    #[test]
    fn schema_violations_read_as_the_api_servers() {
        let invalid = Validator::shared()
            .validate(
                &app(json!({"appId": "com.example.shop", "storage": {"filesystem": {"path": "s"}}, "platforms": ["ios", "windows"]})),
                None,
            )
            .unwrap_err();
        assert_eq!(
            invalid.to_string(),
            "App.ota.dev \"shop\" is invalid: spec.platforms[1]: Unsupported value: \"windows\": \
             supported values: \"ios\", \"android\", \"electron\""
        );
        let invalid = Validator::shared()
            .validate(&app(json!({"storage": {"filesystem": {"path": "s"}}})), None)
            .unwrap_err();
        assert_eq!(invalid.causes, ["spec.appId: Required value"]);
    }

    #[test]
    fn rules_see_defaults_and_nulls_of_non_nullable_fields_are_pruned() {
        // `platforms` is not nullable: a null is pruned and the default applies.
        let valid = app(
            json!({"appId": "com.example.shop", "storage": {"filesystem": {"path": "s"}}, "platforms": null}),
        );
        assert_eq!(Validator::shared().validate(&valid, None), Ok(()));
    }

    #[test]
    fn transition_rules_need_an_old_object() {
        let old = app(json!({"appId": "com.example.shop", "storage": {"filesystem": {"path": "s"}}}));
        let new = app(json!({"appId": "com.example.other", "storage": {"filesystem": {"path": "s"}}}));
        assert_eq!(Validator::shared().validate(&new, None), Ok(()));
        assert_eq!(Validator::shared().validate(&new, Some(&new)), Ok(()));
        let invalid = Validator::shared().validate(&new, Some(&old)).unwrap_err();
        assert_eq!(
            invalid.causes,
            ["spec.appId: Invalid value: \"string\": appId is immutable"]
        );
    }

    #[test]
    fn values_render_as_the_server_shows_them() {
        assert_eq!(render(&json!(1.0)), "1");
        assert_eq!(render(&json!(0.95)), "0.95");
        assert_eq!(render(&json!("a")), "\"a\"");
        assert_eq!(
            FieldPath::default().child("spec").index(2).child("x").to_string(),
            "spec[2].x"
        );
    }
}
