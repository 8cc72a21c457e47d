//! Types and schema pieces shared by the four kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A CEL expression that holds when `self` (a string) is a semantic version
/// (`MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, <https://semver.org>). Written without `\d`
/// because CEL string literals do not accept that escape.
pub const SEMVER_RULE: &str = "self.matches('^(0|[1-9][0-9]*)\\\\.(0|[1-9][0-9]*)\\\\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\\\\+([0-9a-zA-Z-]+(\\\\.[0-9a-zA-Z-]+)*))?$')";

/// A CEL expression that holds when `self` is a name Kubernetes accepts for an object
/// (an RFC 1123 subdomain).
pub const OBJECT_NAME_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// A CEL expression that holds when `self` is a Go-style duration such as `30s`, `15m`, `1h` or
/// `1h30m`.
pub const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h))+$')";

/// A CEL expression that holds when `self` is a lower-case hex SHA-256 digest.
pub const SHA256_RULE: &str = "self.matches('^[0-9a-f]{64}$')";

/// The CEL rule that makes a field immutable once set.
pub const IMMUTABLE_RULE: &str = "self == oldSelf";

/// A reference to a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Schema of a `conditions` list: a list map keyed by `type`, so that server-side apply merges
/// each condition on its own and two conditions of the same type cannot coexist.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "description": "Conditions in the kstatus convention: Ready, Reconciling and Stalled, plus the kind's own.",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// `serde(default)` helper for fields whose default is `true`.
pub(crate) fn default_true() -> bool {
    true
}
