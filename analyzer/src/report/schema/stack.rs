//! Stacks in a document: inline, or shared through the document's tables.
//!
//! `heaptape analyze --json` writes each distinct frame once (the report's `frames`)
//! and each distinct stack once (`stacks`: lists of indices into `frames`, innermost
//! first); every stack key of an object (`stack`, `alloc_stack`, `free_stack`) holds an
//! index into `stacks`. On cc1plus that cuts the document from 46 MB to a tenth: its
//! 7,438 loss records go through 3,824 distinct frames 261,178 times. Reports built in
//! memory with [`StackMaker::inline`] (the library's [`Report`](super::Report)s) hold
//! the frames inline, as does a document passed through [`inline_stacks`].

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::Frame;

/// A stack of an object: its frames (innermost first), or its index in the document's
/// `stacks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Stack {
    /// The frames themselves.
    Frames(Vec<Frame>),
    /// An index into the document's `stacks`.
    Shared(u32),
}

impl Stack {
    /// The frames, for an inline stack (`None` for a shared one).
    pub fn frames(&self) -> Option<&[Frame]> {
        match self {
            Stack::Frames(f) => Some(f),
            Stack::Shared(_) => None,
        }
    }
}

impl From<Vec<Frame>> for Stack {
    fn from(frames: Vec<Frame>) -> Stack {
        Stack::Frames(frames)
    }
}

/// How a document's stacks are made as it is built: inline ([`StackMaker::inline`]),
/// or straight into the document's tables ([`StackMaker::shared`]), so that the
/// frames of a stack that recurs are never held twice (cc1plus: 7,438 loss records
/// over 3,824 distinct frames; building them inline and sharing them afterwards held
/// 70 MB more at the peak).
pub(crate) struct StackMaker {
    tables: Option<std::cell::RefCell<Tables>>,
}

impl StackMaker {
    /// Stacks kept inline (a [`Report`](super::Report) as the library hands it out).
    pub(crate) fn inline() -> StackMaker {
        StackMaker { tables: None }
    }

    /// Stacks shared through the document's tables as they are made.
    pub(crate) fn shared() -> StackMaker {
        StackMaker {
            tables: Some(Default::default()),
        }
    }

    /// The stack of `frames`.
    pub(crate) fn stack(&self, frames: Vec<Frame>) -> Stack {
        let mut stack = Stack::Frames(frames);
        if let Some(t) = &self.tables {
            t.borrow_mut().share(&mut stack);
        }
        stack
    }

    /// The tables (empty for inline stacks): distinct frames, and stacks as indices
    /// into them.
    pub(crate) fn into_tables(self) -> (Vec<Frame>, Vec<Vec<u32>>) {
        self.tables
            .map(|t| {
                let t = t.into_inner();
                (t.frames, t.stacks)
            })
            .unwrap_or_default()
    }
}

/// The document's tables of distinct frames and stacks, filled by [`Tables::share`].
#[derive(Default)]
pub(super) struct Tables {
    pub frames: Vec<Frame>,
    pub stacks: Vec<Vec<u32>>,
    frame_ids: HashMap<Frame, u32>,
    stack_ids: HashMap<Vec<u32>, u32>,
}

impl Tables {
    /// Turns an inline stack into a shared one (a shared one stays as it is).
    pub fn share(&mut self, stack: &mut Stack) {
        let Stack::Frames(frames) = stack else {
            return;
        };
        let ids: Vec<u32> = std::mem::take(frames)
            .into_iter()
            .map(|f| {
                let next = self.frames.len() as u32;
                *self.frame_ids.entry(f).or_insert_with_key(|f| {
                    self.frames.push(f.clone());
                    next
                })
            })
            .collect();
        let next = self.stacks.len() as u32;
        let id = *self.stack_ids.entry(ids).or_insert_with_key(|ids| {
            self.stacks.push(ids.clone());
            next
        });
        *stack = Stack::Shared(id);
    }
}

/// The keys whose numbers are indices into a document's `stacks`.
const STACK_KEYS: [&str; 3] = ["stack", "alloc_stack", "free_stack"];

/// Puts the frames of every shared stack of the document `doc` (as `heaptape analyze
/// --json` writes it) back in place, and empties its tables: the document as it would
/// be with every stack inline. Indices out of range become empty stacks.
pub fn inline_stacks(doc: &mut Value) {
    let frames = doc
        .get_mut("frames")
        .map(Value::take)
        .and_then(|f| match f {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap_or_default();
    let stacks: Vec<Value> = doc
        .get_mut("stacks")
        .map(Value::take)
        .and_then(|s| match s {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let ids = s.as_array().cloned().unwrap_or_default();
            Value::Array(
                ids.iter()
                    .filter_map(|i| i.as_u64().and_then(|i| frames.get(i as usize)).cloned())
                    .collect(),
            )
        })
        .collect();
    if let Some(obj) = doc.as_object_mut() {
        for table in ["frames", "stacks"] {
            if obj.contains_key(table) {
                obj.insert(table.into(), Value::Array(Vec::new()));
            }
        }
        for (key, v) in obj.iter_mut() {
            if key != "frames" && key != "stacks" {
                inline_in(v, &stacks);
            }
        }
    }
}

fn inline_in(v: &mut Value, stacks: &[Value]) {
    match v {
        Value::Object(obj) => {
            for (key, v) in obj.iter_mut() {
                match v.as_u64() {
                    Some(i) if STACK_KEYS.contains(&key.as_str()) => {
                        *v = stacks
                            .get(i as usize)
                            .cloned()
                            .unwrap_or(Value::Array(Vec::new()));
                    }
                    _ => inline_in(v, stacks),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| inline_in(i, stacks)),
        _ => {}
    }
}
