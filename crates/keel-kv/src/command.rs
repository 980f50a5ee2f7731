//! What clients ask the replicated store to do, and what it answers.

use serde::{Deserialize, Serialize};

/// Keys are 1 to 1024 bytes of UTF-8.
pub const KEY_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    Set { key: String, value: Vec<u8> },
    Delete { key: String },
    /// Compare-and-set: if the current value equals `expected` (`None` = key absent), set it
    /// to `value` (`None` = delete).
    Cas { key: String, expected: Option<Vec<u8>>, value: Option<Vec<u8>> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandResult {
    /// The no-op a new leader appends, or an entry that could not be decoded.
    Noop,
    Set,
    Deleted { existed: bool },
    Cas { succeeded: bool, current: Option<Vec<u8>> },
    /// The entry held bytes that are not a command (should never be proposed; see `encode`).
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    EmptyKey,
    KeyTooLong { key_bytes: usize },
    /// The seed's text form: `SET key value` or `DELETE key`.
    Unparseable(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::EmptyKey => write!(f, "key must not be empty"),
            CommandError::KeyTooLong { key_bytes } => write!(f, "key is {key_bytes} bytes; the limit is {KEY_BYTES_MAX}"),
            CommandError::Unparseable(text) => write!(f, "cannot parse command {text:?}: expected `SET key value` or `DELETE key`"),
        }
    }
}

impl std::error::Error for CommandError {}

impl Command {
    pub fn key(&self) -> &str {
        match self {
            Command::Set { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }

    pub fn validate(&self) -> Result<(), CommandError> {
        let key_bytes = self.key().len();
        if key_bytes == 0 {
            return Err(CommandError::EmptyKey);
        }
        if key_bytes > KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLong { key_bytes });
        }
        Ok(())
    }

    /// The seed's text commands: `SET key value with spaces` and `DELETE key`.
    pub fn parse_text(text: &str) -> Result<Command, CommandError> {
        let mut parts = text.splitn(3, ' ');
        let verb = parts.next().unwrap_or_default();
        let key = parts.next().unwrap_or_default().to_string();
        let command = match (verb.to_ascii_uppercase().as_str(), parts.next()) {
            ("SET", Some(value)) => Command::Set { key, value: value.as_bytes().to_vec() },
            ("DELETE", None) => Command::Delete { key },
            _ => return Err(CommandError::Unparseable(text.to_string())),
        };
        command.validate()?;
        Ok(command)
    }

    /// The bytes that go into a log entry. Validated first, so every entry decodes.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        self.validate()?;
        Ok(postcard::to_allocvec(self).expect("serializing to a Vec cannot fail"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        postcard::from_bytes(bytes).map_err(|error| format!("undecodable command: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_commands_keep_spaces_in_values() {
        let command = Command::parse_text("SET greeting hello big world").unwrap();
        assert_eq!(command, Command::Set { key: "greeting".into(), value: b"hello big world".to_vec() });
        assert_eq!(Command::parse_text("DELETE greeting").unwrap(), Command::Delete { key: "greeting".into() });
    }

    #[test]
    fn malformed_text_commands_are_errors() {
        for text in ["", "SET", "SET k", "GET k", "DELETE k extra"] {
            assert!(Command::parse_text(text).is_err(), "{text:?} should not parse");
        }
        let long_key = "k".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(Command::parse_text(&format!("SET {long_key} v")), Err(CommandError::KeyTooLong { key_bytes: KEY_BYTES_MAX + 1 }));
    }

    #[test]
    fn encode_decode_round_trip() {
        let command = Command::Cas { key: "k".into(), expected: None, value: Some(vec![1, 2]) };
        assert_eq!(Command::decode(&command.encode().unwrap()).unwrap(), command);
        assert!(Command::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
