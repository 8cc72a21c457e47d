//! `POST /updates`: the update check.

use super::{
    DecodeError,
    fields::{
        DeviceDetails, Fields, details, identity, non_empty, optional_bool, optional_string, platform,
        plugin_version,
    },
    not_an_object, not_json,
    update_body::UpdateBody,
};
use crate::core::{update::UpdateCheck, version::coerce_native_version};

/// A decoded update check.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// What the decision needs.
    pub check: UpdateCheck,
    /// What is only recorded.
    pub details: DeviceDetails,
}

/// Decodes the body of `POST /updates`.
///
/// The body is read straight into [`UpdateFields`](super::UpdateFields) (borrowed strings, unknown fields skipped),
/// not into a `serde_json::Value`; the answers are those of [`decode_update_object`] on the
/// same body parsed as a map, error for error (a property test holds the two together).
pub fn decode_update(body: &[u8]) -> Result<UpdateRequest, DecodeError> {
    match serde_json::from_slice::<UpdateBody<'_>>(body) {
        Ok(UpdateBody(Some(fields))) => decode_update_object(&fields),
        Ok(UpdateBody(None)) => Err(not_an_object()),
        Err(e) => Err(not_json(&e)),
    }
}

/// Decodes an update check from its fields (see [`decode_update`]).
pub fn decode_update_object(object: &(impl Fields + ?Sized)) -> Result<UpdateRequest, DecodeError> {
    let (app_id, device_id) = identity(object)?;
    let platform = platform(object)?;
    let version_build = optional_string(object, "version_build", 128)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_info", "version_build is missing"))?
        .to_owned();
    let version_name = optional_string(object, "version_name", 128)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DecodeError::new("missing_info", "version_name is missing"))?;
    let on_builtin = version_name == "builtin";
    let version_name = if on_builtin {
        version_build.clone()
    } else {
        version_name.to_owned()
    };
    let check = UpdateCheck {
        app_id,
        device_id,
        platform,
        version_name,
        on_builtin,
        native_version: coerce_native_version(&version_build),
        version_build,
        plugin_version: plugin_version(object)?,
        is_emulator: optional_bool(object, "is_emulator")?.unwrap_or(false),
        is_prod: optional_bool(object, "is_prod")?.unwrap_or(true),
        default_channel: non_empty(optional_string(object, "defaultChannel", 253)?),
        key_id: non_empty(optional_string(object, "key_id", 64)?),
    };
    Ok(UpdateRequest {
        check,
        details: details(object)?,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{
        super::test_support::{body, valid},
        *,
    };

    #[test]
    fn a_valid_check_is_normalised() {
        let request = decode_update(&body(valid())).unwrap();
        let check = request.check;
        assert_eq!(check.device_id, "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11");
        assert!(check.on_builtin);
        assert_eq!(check.version_name, "1.4");
        assert_eq!(check.native_version, Some(semver::Version::new(1, 4, 0)));
        assert_eq!(check.default_channel, None);
        assert_eq!(check.key_id.as_deref(), Some("MIIBCgKCAQEAq1b2c3d4"));
        assert_eq!(request.details.custom_id, None);
        assert_eq!(request.details.version_os.as_deref(), Some("14"));
    }

    #[test]
    fn old_plugins_without_optional_fields_get_capgo_defaults() {
        let request = decode_update(&body(json!({
            "platform": "ios", "device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11", "app_id": "com.example.shop",
            "version_build": "1.0.0", "version_name": "1.0.1"
        })))
        .unwrap();
        assert_eq!(request.check.plugin_version, semver::Version::new(2, 3, 3));
        assert!(request.check.is_prod);
        assert!(!request.check.is_emulator);
    }

    #[test]
    fn bad_input_gets_the_protocol_error_codes() {
        let with = |patch: Value| {
            let mut v = valid();
            for (key, value) in patch.as_object().unwrap() {
                if value.is_null() {
                    v.as_object_mut().unwrap().remove(key);
                } else {
                    v[key] = value.clone();
                }
            }
            decode_update(&body(v)).unwrap_err().code
        };
        assert_eq!(
            decode_update(b"{not json").unwrap_err().code,
            "invalid_json_parse_body"
        );
        assert_eq!(decode_update(b"[1,2]").unwrap_err().code, "invalid_json_body");
        assert_eq!(decode_update(b"").unwrap_err().code, "invalid_json_parse_body");
        assert_eq!(with(json!({"app_id": null})), "missing_app_id");
        assert_eq!(with(json!({"app_id": "shop"})), "invalid_app_id");
        assert_eq!(with(json!({"app_id": 12})), "invalid_json_body");
        assert_eq!(with(json!({"device_id": null})), "missing_device_id");
        assert_eq!(with(json!({"device_id": "not-a-uuid"})), "invalid_device_id");
        assert_eq!(
            with(json!({"device_id": "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11-extra"})),
            "invalid_device_id"
        );
        assert_eq!(with(json!({"device_id": ["x"]})), "invalid_device_id");
        assert_eq!(with(json!({"platform": "windows"})), "invalid_json_body");
        assert_eq!(with(json!({"platform": null})), "invalid_json_body");
        assert_eq!(with(json!({"version_build": null})), "missing_info");
        assert_eq!(with(json!({"version_name": ""})), "missing_info");
        assert_eq!(with(json!({"plugin_version": "eight"})), "semver_error");
        assert_eq!(with(json!({"is_prod": "yes"})), "invalid_json_body");
        assert_eq!(with(json!({"custom_id": "x".repeat(37)})), "invalid_json_body");
        assert_eq!(with(json!({"key_id": 5})), "invalid_json_body");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn a_valid_check_with_any_device_id_casing_decodes(upper in any::<bool>(), n in any::<u64>()) {
            let id = format!("{:08x}-3b1c-4c55-9a7e-{:012x}", n as u32, n & 0xffff_ffff_ffff);
            let id = if upper { id.to_ascii_uppercase() } else { id };
            let mut v = valid();
            v["device_id"] = json!(id);
            let check = decode_update(&body(v)).unwrap().check;
            prop_assert_eq!(check.device_id, id.to_ascii_lowercase());
        }
    }
}
