//! Zoho's data centres. One emulator serves them all, each under its own path prefix:
//! the accounts server of `dc` at `{base}/{dc}/accounts` (real: `accounts.zoho.<dc>`,
//! `accounts.zohocloud.ca`) and its API domain at `{base}/{dc}/api` (real:
//! `www.zohoapis.<dc>`).

/// A Zoho data centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataCentre {
    Us,
    Eu,
    In,
    Au,
    Jp,
    Cn,
    Ca,
    Sa,
}

impl DataCentre {
    pub const ALL: [DataCentre; 8] = [
        DataCentre::Us,
        DataCentre::Eu,
        DataCentre::In,
        DataCentre::Au,
        DataCentre::Jp,
        DataCentre::Cn,
        DataCentre::Ca,
        DataCentre::Sa,
    ];

    /// The domain suffix, which is also the emulator's path prefix: `com`, `eu`,
    /// `in`, `com.au`, `jp`, `com.cn`, `ca`, `sa`.
    pub fn suffix(self) -> &'static str {
        match self {
            DataCentre::Us => "com",
            DataCentre::Eu => "eu",
            DataCentre::In => "in",
            DataCentre::Au => "com.au",
            DataCentre::Jp => "jp",
            DataCentre::Cn => "com.cn",
            DataCentre::Ca => "ca",
            DataCentre::Sa => "sa",
        }
    }

    /// The `location` Zoho puts on the OAuth callback: `us` for `.com`, `au` for
    /// `.com.au`, `cn` for `.com.cn`, otherwise the suffix.
    pub fn location(self) -> &'static str {
        match self {
            DataCentre::Us => "us",
            DataCentre::Au => "au",
            DataCentre::Cn => "cn",
            other => other.suffix(),
        }
    }

    /// Parses a path prefix (`com.au`) or a location (`au`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|dc| dc.suffix() == s || dc.location() == s)
    }

    pub fn accounts_url(self, base_url: &str) -> String {
        format!(
            "{}/{}/accounts",
            base_url.trim_end_matches('/'),
            self.suffix()
        )
    }

    pub fn api_domain(self, base_url: &str) -> String {
        format!("{}/{}/api", base_url.trim_end_matches('/'), self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_locations_both_parse() {
        for dc in DataCentre::ALL {
            assert_eq!(DataCentre::parse(dc.suffix()), Some(dc));
            assert_eq!(DataCentre::parse(dc.location()), Some(dc));
        }
        assert_eq!(DataCentre::parse("com.au"), Some(DataCentre::Au));
        assert_eq!(DataCentre::parse("uk"), None);
        assert_eq!(
            DataCentre::Eu.api_domain("http://127.0.0.1:9/"),
            "http://127.0.0.1:9/eu/api"
        );
    }
}
