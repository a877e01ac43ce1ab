//! speedscope files of a trace (`heaptape export --format speedscope`): the JSON file
//! format of <https://www.speedscope.app> (its schema:
//! `https://www.speedscope.app/file-format-schema.json`), one "sampled" profile per
//! measure — bytes in use when each program ended, bytes allocated, allocation calls —
//! whose samples are the trace's call stacks (outermost frame first, as speedscope
//! wants) weighted by the measure. Frames are shared by the profiles, each named by its
//! function (inlined calls are frames of their own) with its file and line. When the
//! trace holds more than one process image, every stack starts with a frame naming the
//! process, as in the flamegraphs.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::frames::{folded_name, frames_of};
use crate::symbolize::{Frame, Symbolizer};
use crate::Analysis;

/// The file (serialized as speedscope's `FileFormat.File`).
#[derive(Serialize)]
pub struct File {
    /// The schema's address.
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    /// The frames every profile refers to by index.
    pub shared: Shared,
    /// One profile per measure.
    pub profiles: Vec<Profile>,
    /// The file's name in speedscope.
    pub name: String,
    /// The profile shown first.
    #[serde(rename = "activeProfileIndex")]
    pub active_profile_index: usize,
    /// Who wrote it.
    pub exporter: String,
}

/// `FileFormat.Shared`.
#[derive(Serialize)]
pub struct Shared {
    /// The frames.
    pub frames: Vec<SFrame>,
}

/// `FileFormat.Frame`.
#[derive(Serialize, PartialEq, Eq, Hash, Clone)]
pub struct SFrame {
    /// The function (or what stands for it).
    pub name: String,
    /// Its source file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its source line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// `FileFormat.SampledProfile`.
#[derive(Serialize)]
pub struct Profile {
    /// Always `sampled`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What it measures.
    pub name: String,
    /// `bytes` or `none` (counts).
    pub unit: &'static str,
    /// 0.
    #[serde(rename = "startValue")]
    pub start_value: u64,
    /// The sum of the weights.
    #[serde(rename = "endValue")]
    pub end_value: u64,
    /// Stacks, outermost frame first, as frame indexes.
    pub samples: Vec<Vec<usize>>,
    /// One weight per sample.
    pub weights: Vec<u64>,
}

/// The speedscope file of `a`, frames described by `sym`.
pub fn file(a: &Analysis, sym: &dyn Symbolizer) -> File {
    let mut frames: Vec<SFrame> = Vec::new();
    let mut index: HashMap<SFrame, usize> = HashMap::new();
    let mut intern = |f: SFrame| -> usize {
        *index.entry(f.clone()).or_insert_with(|| {
            frames.push(f);
            frames.len() - 1
        })
    };
    let measures: [(&str, &'static str); 3] = [
        ("Bytes in use at exit", "bytes"),
        ("Bytes allocated", "bytes"),
        ("Allocation calls", "none"),
    ];
    let mut profiles: Vec<Profile> = measures
        .iter()
        .map(|&(name, unit)| Profile {
            kind: "sampled",
            name: name.to_string(),
            unit,
            start_value: 0,
            end_value: 0,
            samples: Vec::new(),
            weights: Vec::new(),
        })
        .collect();
    let images: Vec<_> = a.images().map(|(p, i)| (p.pid, i)).collect();
    let tagged = images.len() > 1;
    for (pid, img) in images {
        let root = tagged.then(|| {
            intern(SFrame {
                name: format!("pid {pid}: {}", img.command.join(" ").trim()),
                file: None,
                line: None,
            })
        });
        for site in super::callsites::image_call_sites(a, img, sym) {
            let f = img.site_figures(&site.stats, 0);
            let values = [f.in_use_at_exit_bytes, f.allocated_bytes, f.allocations];
            if values.iter().all(|&v| v == 0) {
                continue;
            }
            let described = frames_of(site.addresses(&a.stacks), &img.modules, sym);
            let mut stack: Vec<usize> = root.into_iter().collect();
            stack.extend(described.iter().rev().map(|fr| intern(frame(fr))));
            for (p, v) in profiles.iter_mut().zip(values) {
                if v > 0 {
                    p.samples.push(stack.clone());
                    p.weights.push(v);
                    p.end_value = p.end_value.saturating_add(v);
                }
            }
        }
    }
    let command = a.header.command.join(" ");
    File {
        schema: "https://www.speedscope.app/file-format-schema.json",
        shared: Shared { frames },
        profiles,
        name: format!("heaptape: {}", command.trim()),
        active_profile_index: 0,
        exporter: a.header.tool_version.clone(),
    }
}

fn frame(f: &Frame) -> SFrame {
    SFrame {
        name: folded_name(f),
        file: f.file.clone(),
        line: f.line,
    }
}

/// Writes the speedscope file of `a` as JSON.
pub fn write_speedscope(a: &Analysis, sym: &dyn Symbolizer, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &file(a, sym)).map_err(io::Error::from)?;
    out.write_all(b"\n")
}
