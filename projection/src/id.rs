//! [`ProjectionId`]: a projection's name and key, validated once.

use std::fmt;

use persistence_api::{Error, Result};

/// The longest name or key, in bytes (UTF-8): what every backend can key by.
pub const MAX_PROJECTION_ID_PART_BYTES: usize = 255;

/// Identifies one projection's stored offset: a `name` (the projection, e.g.
/// `"account-balances"`) and a `key` (the part of the stream it reads, e.g. a tag or a
/// slice range), as Akka Projections' `ProjectionId(name, key)`.
///
/// Both are 1 to [`MAX_PROJECTION_ID_PART_BYTES`] bytes of UTF-8 without control
/// characters; anything else is [`persistence_api::ErrorKind::InvalidInput`] before any
/// request.
///
/// ```
/// use persistence_projection::ProjectionId;
/// let id = ProjectionId::new("balances", "tag-deposit").unwrap();
/// assert_eq!(id.to_string(), "balances/tag-deposit");
/// assert!(ProjectionId::new("", "k").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionId {
    name: String,
    key: String,
}

impl ProjectionId {
    /// A validated id.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let key = key.into();
        check("name", &name)?;
        check("key", &key)?;
        Ok(ProjectionId { name, key })
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The projection's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ProjectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.key)
    }
}

fn check(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(format!(
            "a projection {what} must not be empty"
        )));
    }
    if value.len() > MAX_PROJECTION_ID_PART_BYTES {
        return Err(Error::invalid_input(format!(
            "a projection {what} is at most {MAX_PROJECTION_ID_PART_BYTES} bytes (got {} bytes: {:?}...)",
            value.len(),
            value.chars().take(32).collect::<String>()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid_input(format!(
            "a projection {what} must not contain control characters (got {c:?} in {value:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use persistence_api::ErrorKind;

    #[test]
    fn bad_names_and_keys_are_invalid_input_naming_the_part() {
        for (name, key, part) in [
            ("", "k", "name"),
            ("n", "", "key"),
            ("n\u{1f}x", "k", "name"),
            ("n", "k\n", "key"),
        ] {
            let err = ProjectionId::new(name, key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains(part), "{err}");
        }
        let long = "x".repeat(MAX_PROJECTION_ID_PART_BYTES + 1);
        assert!(ProjectionId::new(long.clone(), "k").is_err());
        assert!(ProjectionId::new("n", &long[1..]).is_ok());
    }
}
