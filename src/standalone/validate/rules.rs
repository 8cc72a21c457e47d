//! The CEL rules of a CRD (`x-kubernetes-validations`), evaluated at every level of a document
//! as the API server does: `self` is the value at the rule's place, `oldSelf` the same place in
//! the previous version (transition rules run only on an update, where that place existed).

use std::{collections::HashMap, sync::Arc};

use cel::{Context, Env, ExecutionError, Program, Value as CelValue, extractors::This};
use serde_json::Value;

use super::{FieldPath, RuleCompileError, type_name};

/// A rule of a CRD that does not compile: its source and why.
#[derive(Debug)]
pub(super) struct UncompiledRule {
    /// The rule's source, or `<strings extension>` when the extension could not be declared.
    pub(super) rule: String,
    /// The CEL compiler's error.
    pub(super) cause: RuleCompileError,
}

/// The compiled rules of one CRD, by their source.
pub(super) struct Rules {
    env: Arc<Env>,
    programs: HashMap<String, Program>,
}

impl Rules {
    /// Compiles every rule of `schema`; the error names the rule and the parser's message.
    pub(super) fn compile(schema: &Value) -> Result<Self, UncompiledRule> {
        let mut env = Env::stdlib();
        // Kubernetes' CEL has cel-go's string extension (`trim`, ...).
        env.add_extension(cel::extensions::strings)
            .map_err(|error| UncompiledRule {
                rule: "<strings extension>".to_owned(),
                cause: error.into(),
            })?;
        let mut sources = Vec::new();
        collect_rules(schema, &mut sources);
        let mut programs = HashMap::new();
        for source in sources {
            let program = env.compile(&source).map_err(|error| UncompiledRule {
                rule: source.clone(),
                cause: error.into(),
            })?;
            programs.insert(source, program);
        }
        Ok(Self {
            env: Arc::new(env),
            programs,
        })
    }

    /// Adds a cause to `out` for each rule `object` breaks. With `report_errors` false, a rule
    /// that fails to evaluate (a value of the wrong shape) is passed over.
    pub(super) fn check(
        &self,
        schema: &Value,
        object: &Value,
        old: Option<&Value>,
        report_errors: bool,
        out: &mut Vec<String>,
    ) {
        self.walk(schema, object, old, &FieldPath::default(), report_errors, out);
    }

    fn walk(
        &self,
        schema: &Value,
        value: &Value,
        old: Option<&Value>,
        path: &FieldPath,
        report_errors: bool,
        out: &mut Vec<String>,
    ) {
        if value.is_null() {
            return; // the server evaluates no rule on a null
        }
        let shape = schema["type"].as_str().unwrap_or(type_name(value));
        for validation in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(source) = validation["rule"].as_str() else {
                continue;
            };
            let Some(program) = self.programs.get(source) else {
                continue; // every rule was compiled from this very schema
            };
            let old = old.filter(|old| !old.is_null());
            if program.references().has_variable("oldSelf") && old.is_none() {
                continue; // a transition rule, on a create or on a new place
            }
            match self.evaluate(program, schema, value, old) {
                Ok(CelValue::Bool(true)) => {}
                Ok(CelValue::Bool(false)) => {
                    let message = validation["message"]
                        .as_str()
                        .map_or_else(|| format!("failed rule: {source}"), str::to_owned);
                    out.push(format!("{path}: Invalid value: \"{shape}\": {message}"));
                }
                Ok(other) => {
                    if report_errors {
                        out.push(format!(
                            "{path}: Invalid value: \"{shape}\": rule {source:?} returned {other:?}, not a bool"
                        ));
                    }
                }
                Err(error) => {
                    if report_errors {
                        out.push(format!(
                            "{path}: Invalid value: \"{shape}\": rule {source:?} could not be evaluated: {error}"
                        ));
                    }
                }
            }
        }
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    let old_field = old.and_then(|old| old.get(name));
                    if let Some(property) = schema["properties"].get(name) {
                        self.walk(property, field, old_field, &path.child(name), report_errors, out);
                    } else if schema["additionalProperties"].is_object() {
                        let child = &schema["additionalProperties"];
                        self.walk(child, field, old_field, &path.key(name), report_errors, out);
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let old_item = old.and_then(|old| correlated_item(schema, item, old));
                    let item_path = path.index(index);
                    self.walk(&schema["items"], item, old_item, &item_path, report_errors, out);
                }
            }
            _ => {}
        }
    }

    fn evaluate(
        &self,
        program: &Program,
        schema: &Value,
        value: &Value,
        old: Option<&Value>,
    ) -> Result<CelValue, ExecutionError> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        context
            .add_function("isSorted", is_sorted)
            .map_err(|error| ExecutionError::function_error("isSorted", error))?;
        context.add_variable_from_value("self", to_cel(schema, value));
        if let Some(old) = old {
            context.add_variable_from_value("oldSelf", to_cel(schema, old));
        }
        program.execute(&context)
    }
}

/// The rule sources of a schema and of every schema under it.
fn collect_rules(schema: &Value, out: &mut Vec<String>) {
    let Some(fields) = schema.as_object() else {
        return;
    };
    for validation in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(rule) = validation["rule"].as_str() {
            out.push(rule.to_owned());
        }
    }
    for property in fields
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|properties| properties.values())
    {
        collect_rules(property, out);
    }
    for keyword in ["items", "additionalProperties"] {
        if let Some(child) = fields.get(keyword) {
            collect_rules(child, out);
        }
    }
}

/// The item of the old list that an item of a `map` list continues (same key fields), as the
/// server correlates them; items of other lists have no old self.
fn correlated_item<'a>(schema: &Value, item: &Value, old: &'a Value) -> Option<&'a Value> {
    if schema["x-kubernetes-list-type"].as_str() != Some("map") {
        return None;
    }
    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    old.as_array()?
        .iter()
        .find(|candidate| keys.iter().all(|key| candidate[*key] == item[*key]))
}

/// A JSON value as CEL sees it, typed by its schema: a `number` field is a double even when the
/// YAML wrote `1`.
fn to_cel(schema: &Value, value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(flag) => CelValue::Bool(*flag),
        Value::Number(number) => match (schema["type"].as_str(), number.as_i64(), number.as_u64()) {
            (Some("number"), _, _) | (_, None, None) => CelValue::Float(number.as_f64().unwrap_or(f64::NAN)),
            (_, Some(int), _) => CelValue::Int(int),
            (_, None, Some(uint)) => CelValue::UInt(uint),
        },
        Value::String(text) => CelValue::String(Arc::new(text.clone())),
        Value::Array(items) => CelValue::List(Arc::new(
            items.iter().map(|item| to_cel(&schema["items"], item)).collect(),
        )),
        Value::Object(fields) => {
            let map: HashMap<String, CelValue> = fields
                .iter()
                .map(|(name, field)| {
                    let child = schema["properties"]
                        .get(name)
                        .unwrap_or(&schema["additionalProperties"]);
                    (name.clone(), to_cel(child, field))
                })
                .collect();
            map.into()
        }
    }
}

/// Kubernetes' `list.isSorted()`: whether each element is at most the next.
fn is_sorted(This(list): This<Arc<Vec<CelValue>>>) -> Result<bool, ExecutionError> {
    for pair in list.windows(2) {
        match pair[0].partial_cmp(&pair[1]) {
            Some(std::cmp::Ordering::Greater) => return Ok(false),
            Some(_) => {}
            None => {
                return Err(ExecutionError::function_error(
                    "isSorted",
                    format!("cannot compare {:?} with {:?}", pair[0], pair[1]),
                ));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn causes(schema: &Value, value: &Value, old: Option<&Value>) -> Vec<String> {
        let rules = Rules::compile(schema).unwrap();
        let mut out = Vec::new();
        rules.check(schema, value, old, true, &mut out);
        out
    }

    #[test]
    fn rules_run_at_every_level_with_the_kubernetes_functions() {
        let schema = json!({"type": "object", "properties": {"steps": {
            "type": "array",
            "items": {"type": "object", "properties": {"p": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "has(self.p)", "message": "p is needed"}]},
            "x-kubernetes-validations": [{"rule": "self.filter(s, has(s.p)).map(s, s.p).isSorted()", "message": "p must not decrease"}]
        }, "key": {"type": "string", "x-kubernetes-validations": [{"rule": "self.trim().startsWith('k')"}]}}});
        assert!(
            causes(
                &schema,
                &json!({"steps": [{"p": 1}, {"p": 2}], "key": " k"}),
                None
            )
            .is_empty()
        );
        assert_eq!(
            causes(
                &schema,
                &json!({"steps": [{"p": 2}, {}, {"p": 1}], "key": "x"}),
                None
            ),
            [
                "key: Invalid value: \"string\": failed rule: self.trim().startsWith('k')",
                "steps: Invalid value: \"array\": p must not decrease",
                "steps[1]: Invalid value: \"object\": p is needed",
            ]
        );
    }

    #[test]
    fn transition_rules_compare_with_the_correlated_old_value() {
        let schema = json!({"type": "object", "properties": {"items": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
            "items": {"type": "object", "properties": {"id": {"type": "string"}, "v": {"type": "integer",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "v is immutable"}]}}}
        }}});
        let old = json!({"items": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]});
        let new = json!({"items": [{"id": "b", "v": 2}, {"id": "a", "v": 3}, {"id": "c", "v": 9}]});
        assert!(causes(&schema, &new, None).is_empty());
        assert_eq!(
            causes(&schema, &new, Some(&old)),
            ["items[1].v: Invalid value: \"integer\": v is immutable"]
        );
    }
}
