//! The one mapping between [`Platform`] and the names the plugin sends (`ios`, `android`,
//! `electron`), the same as the CRDs' serde names.

use super::app::Platform;

impl Platform {
    /// Every platform, in the order the plugin's documentation lists them.
    pub const ALL: [Platform; 3] = [Platform::Ios, Platform::Android, Platform::Electron];

    /// The name the plugin sends (and the CRDs use).
    pub const fn name(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Electron => "electron",
        }
    }

    /// The platform of a name the plugin sends; None for any other string.
    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|platform| platform.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names_and_read_back() {
        for platform in Platform::ALL {
            let json = serde_json::to_value(platform).unwrap();
            assert_eq!(json, platform.name());
            assert_eq!(Platform::from_name(platform.name()), Some(platform));
        }
        assert_eq!(Platform::from_name("IOS"), None);
        assert_eq!(Platform::from_name("web"), None);
    }
}
