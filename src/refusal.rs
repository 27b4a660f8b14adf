//! What a business rule says when it refuses: the one error the domain's rules return. It knows
//! nothing of storage; the store maps it once into its own error (`StoreError`), and the HTTP
//! layer maps that once into a response.

/// A rule of the domain refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request contradicts the state it would change (409).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// The request is well formed but cannot be carried out as asked (422).
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
}

impl Refusal {
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::Conflict { code, detail: detail.into() }
    }
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::Invalid { code, detail: detail.into() }
    }
}
