//! A frame of a stack.

use serde::Serialize;

/// One frame, as the symbolizer describes it (inlined calls are frames of their own,
/// all with the address of the call they were inlined into).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// The return address from the stack, `"0x…"`.
    pub address: String,
    /// The source file, if known.
    pub file: Option<String>,
    /// The function, if known.
    pub function: Option<String>,
    /// Whether the compiler inlined this call into the next frame.
    pub inlined: bool,
    /// The source line, if known.
    pub line: Option<u32>,
    /// The path of the module holding the address, if known.
    pub module: Option<String>,
    /// Why a frame in a known module has no function (`"no symbols: stripped, no
    /// debug file found"`, ...); absent when it has one, or when the analysis read no
    /// symbols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_symbols: Option<String>,
    /// The address relative to the module's load bias (its link-time address),
    /// `"0x…"`, when the module is known.
    pub offset: Option<String>,
}
