//! Secret values. They come from an environment variable or a file named in
//! the configuration, never from the configuration text itself, and their
//! `Debug`/`Display` never show the value.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret's value comes from, as written in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// A label for this secret (e.g. `2026-11`): recorded in the envelope and
    /// counted in metrics so operators see which secret of a rotation is still
    /// used. Never the value.
    pub id: String,
    /// Name of the environment variable holding the value.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file holding the value (one trailing newline is ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Whether `id` may label a secret: it is recorded in the envelope and in
/// metrics labels, so 1-64 of `a-z A-Z 0-9 . _ -`.
pub fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A secret value. Cannot be printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps raw bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The raw bytes, for keying a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret could not be read. Never contains the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Both or neither of `env` and `file` are set.
    #[error("secret {id:?} must name exactly one of `env` or `file`")]
    Ambiguous { id: String },
    /// The variable is not set.
    #[error("secret {id:?}: environment variable {var} is not set")]
    EnvUnset { id: String, var: String },
    /// The variable or file is empty.
    #[error("secret {id:?}: {from} is empty")]
    Empty { id: String, from: String },
    /// The file could not be read.
    #[error("secret {id:?}: cannot read {path}: {reason}")]
    File {
        id: String,
        path: String,
        reason: String,
    },
}

impl SecretRef {
    /// Reads the value from the environment or the file.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let id = self.id.clone();
        let (bytes, from) = match (&self.env, &self.file) {
            (Some(var), None) => match std::env::var_os(var) {
                Some(v) => (
                    v.into_encoded_bytes(),
                    format!("environment variable {var}"),
                ),
                None => {
                    return Err(SecretError::EnvUnset {
                        id,
                        var: var.clone(),
                    });
                }
            },
            (None, Some(path)) => match std::fs::read(path) {
                Ok(mut b) => {
                    if b.last() == Some(&b'\n') {
                        b.pop();
                        if b.last() == Some(&b'\r') {
                            b.pop();
                        }
                    }
                    (b, format!("file {}", path.display()))
                }
                Err(e) => {
                    return Err(SecretError::File {
                        id,
                        path: path.display().to_string(),
                        reason: e.kind().to_string(),
                    });
                }
            },
            _ => return Err(SecretError::Ambiguous { id }),
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty { id, from });
        }
        Ok(Secret(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn reads_a_file_without_its_trailing_newline() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"s3cret\n").unwrap();
        let r = SecretRef {
            id: "a".into(),
            env: None,
            file: Some(f.path().to_path_buf()),
        };
        assert_eq!(r.load().unwrap().expose(), b"s3cret");
    }

    #[test]
    fn names_what_is_wrong() {
        let r = SecretRef {
            id: "a".into(),
            env: Some("INGEST_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert_eq!(
            r.load().unwrap_err().to_string(),
            "secret \"a\": environment variable INGEST_TEST_SURELY_UNSET_VAR is not set"
        );
        let both = SecretRef {
            id: "b".into(),
            env: Some("X".into()),
            file: Some("/x".into()),
        };
        assert!(matches!(both.load(), Err(SecretError::Ambiguous { .. })));
        let missing = SecretRef {
            id: "c".into(),
            env: None,
            file: Some("/nonexistent/secret".into()),
        };
        assert!(matches!(missing.load(), Err(SecretError::File { .. })));
    }
}
