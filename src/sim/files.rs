//! Files and folders written on the simulated Tapis (`mkdir`, `insert`, or a test's
//! `Sim::put_tapis_file`), kept over the generated dataset: listings and downloads show the
//! two merged, a written file shadows a generated one at the same path, and an upload
//! overwrites whatever file is there with no condition, as Tapis does.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::dataset::{Dir, File, NodeRef, SimSystem, CHUNK};
use super::util::unix;

/// What was written, per system, by path relative to the system root (`a/b/c`).
#[derive(Debug, Default)]
pub(crate) struct Written {
    systems: HashMap<String, BTreeMap<String, Node>>,
}

/// A written entry.
#[derive(Clone, Debug)]
enum Node {
    Dir { mtime: u64 },
    File(WrittenFile),
}

/// A written file's content.
#[derive(Clone, Debug)]
pub(crate) struct WrittenFile {
    pub bytes: Bytes,
    pub sha256: String,
    pub mtime: u64,
}

impl WrittenFile {
    fn new(bytes: Bytes) -> WrittenFile {
        WrittenFile {
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes,
            mtime: unix(SystemTime::now()).as_secs(),
        }
    }
}

/// A file found at a path: generated or written.
#[derive(Clone, Debug)]
pub(crate) enum Found<'a> {
    Generated(&'a File),
    Written(WrittenFile),
}

impl Found<'_> {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Found::Generated(f) => f.size,
            Found::Written(w) => w.bytes.len() as u64,
        }
    }

    /// Its listing item, under `name`.
    pub fn item(&self, name: &str) -> Item<'static> {
        let (mtime, mime) = match self {
            Found::Generated(f) => (f.mtime, Some(f.mime())),
            Found::Written(w) => (w.mtime, mime(name)),
        };
        Item {
            name: name.to_owned(),
            mtime,
            size: self.size(),
            mime,
            dir: None,
        }
    }

    /// The content in chunks of at most 64 KiB.
    pub fn chunks(&self) -> Box<dyn Iterator<Item = Bytes> + Send> {
        match self {
            Found::Generated(f) => Box::new(f.reader()),
            Found::Written(w) => {
                let bytes = w.bytes.clone();
                let len = bytes.len();
                Box::new(
                    (0..len)
                        .step_by(CHUNK)
                        .map(move |start| bytes.slice(start..len.min(start + CHUNK))),
                )
            }
        }
    }
}

/// What a path names.
#[derive(Clone, Debug)]
pub(crate) enum Entry<'a> {
    /// A folder: generated, written, or both.
    Dir(Option<&'a Dir>),
    /// A file.
    File(Found<'a>),
}

/// One item of a listing, as Tapis describes it.
#[derive(Clone, Debug)]
pub(crate) struct Item<'a> {
    pub name: String,
    pub mtime: u64,
    pub size: u64,
    pub mime: Option<&'static str>,
    /// `Some` for a folder (with its generated part, if any).
    pub dir: Option<Option<&'a Dir>>,
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// A parent (this path) is a file.
    NotADir(String),
    /// The target is a folder.
    IsADir(String),
}

fn join(segments: &[String]) -> String {
    segments.join("/")
}

/// MIME type Tapis would guess for a written file's name.
fn mime(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "tif" | "tiff" => "image/tiff",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "json" | "geojson" => "application/json",
        "txt" | "csv" => "text/plain",
        _ => return None,
    })
}

impl Written {
    fn of(&self, sys: &str) -> Option<&BTreeMap<String, Node>> {
        self.systems.get(sys)
    }

    /// What `segments` names on `sys` (written entries first), if anything.
    pub fn lookup<'a>(&self, sys: &'a SimSystem, segments: &[String]) -> Option<Entry<'a>> {
        let generated = sys.root.lookup(segments);
        let written = self.of(&sys.id).and_then(|m| m.get(&join(segments)));
        match (written, generated) {
            (Some(Node::File(w)), _) => Some(Entry::File(Found::Written(w.clone()))),
            (Some(Node::Dir { .. }), Some(NodeRef::Dir(d))) => Some(Entry::Dir(Some(d))),
            (Some(Node::Dir { .. }), _) => Some(Entry::Dir(None)),
            (None, Some(NodeRef::Dir(d))) => Some(Entry::Dir(Some(d))),
            (None, Some(NodeRef::File(f))) => Some(Entry::File(Found::Generated(f))),
            (None, None) => None,
        }
    }

    /// The entries of the folder at `path` (its generated part is `generated`), merged and
    /// sorted case-insensitively by name as Tapis sorts them.
    pub fn children<'a>(&self, sys: &str, path: &str, generated: Option<&'a Dir>) -> Vec<Item<'a>> {
        let mut items: Vec<Item<'a>> = generated
            .map(|d| d.children.iter().map(|c| item(c.as_ref())).collect())
            .unwrap_or_default();
        let Some(written) = self.of(sys) else {
            return items;
        };
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut added = false;
        for (key, node) in written.range(prefix.clone()..) {
            let Some(name) = key.strip_prefix(&prefix) else {
                break;
            };
            if name.is_empty() || name.contains('/') {
                continue;
            }
            let same = items.iter().position(|i| i.name == name);
            let new = match node {
                Node::Dir { mtime } => match same {
                    // A folder both generated and written keeps its generated view.
                    Some(_) => continue,
                    None => Item {
                        name: name.to_owned(),
                        mtime: *mtime,
                        size: 4096,
                        mime: None,
                        dir: Some(None),
                    },
                },
                Node::File(w) => Item {
                    name: name.to_owned(),
                    mtime: w.mtime,
                    size: w.bytes.len() as u64,
                    mime: mime(name),
                    dir: None,
                },
            };
            match same {
                Some(i) => items[i] = new,
                None => items.push(new),
            }
            added = true;
        }
        if added {
            items.sort_by(|a, b| {
                (a.name.to_lowercase(), &a.name).cmp(&(b.name.to_lowercase(), &b.name))
            });
        }
        items
    }

    /// Creates the folder `segments` and its missing parents (an existing folder is fine).
    pub fn mkdir(&mut self, sys: &SimSystem, segments: &[String]) -> Result<(), Conflict> {
        for n in 1..=segments.len() {
            match self.lookup(sys, &segments[..n]) {
                Some(Entry::Dir(_)) => {}
                Some(Entry::File(_)) => return Err(Conflict::NotADir(join(&segments[..n]))),
                None => {
                    let mtime = unix(SystemTime::now()).as_secs();
                    self.systems
                        .entry(sys.id.clone())
                        .or_default()
                        .insert(join(&segments[..n]), Node::Dir { mtime });
                }
            }
        }
        Ok(())
    }

    /// Whether a file may be written at `segments` (non-empty): no parent is a file and the
    /// target is not a folder.
    pub fn check_file(&self, sys: &SimSystem, segments: &[String]) -> Result<(), Conflict> {
        for n in 1..segments.len() {
            if let Some(Entry::File(_)) = self.lookup(sys, &segments[..n]) {
                return Err(Conflict::NotADir(join(&segments[..n])));
            }
        }
        match self.lookup(sys, segments) {
            Some(Entry::Dir(_)) => Err(Conflict::IsADir(join(segments))),
            _ => Ok(()),
        }
    }

    /// Writes a file at `segments` (non-empty), making missing parent folders and replacing any
    /// file already there.
    pub fn write(
        &mut self,
        sys: &SimSystem,
        segments: &[String],
        bytes: Bytes,
    ) -> Result<(), Conflict> {
        let (_, parent) = segments.split_last().expect("a file path has a name");
        self.mkdir(sys, parent)?;
        if let Some(Entry::Dir(_)) = self.lookup(sys, segments) {
            return Err(Conflict::IsADir(join(segments)));
        }
        self.systems
            .entry(sys.id.clone())
            .or_default()
            .insert(join(segments), Node::File(WrittenFile::new(bytes)));
        Ok(())
    }

    /// Every written file of `sys` under the folder `prefix` (no trailing slash), by path
    /// relative to that folder.
    pub fn files_under(&self, sys: &str, prefix: &str) -> Vec<(String, WrittenFile)> {
        let Some(written) = self.of(sys) else {
            return Vec::new();
        };
        let prefix = format!("{prefix}/");
        written
            .range(prefix.clone()..)
            .map_while(|(k, n)| Some((k.strip_prefix(&prefix)?, n)))
            .filter_map(|(rel, n)| match n {
                Node::File(w) => Some((rel.to_owned(), w.clone())),
                Node::Dir { .. } => None,
            })
            .collect()
    }
}

/// The listing item of a generated entry.
fn item(node: NodeRef<'_>) -> Item<'_> {
    match node {
        NodeRef::Dir(d) => Item {
            name: d.name.clone(),
            mtime: d.mtime,
            size: 4096,
            mime: None,
            dir: Some(Some(d)),
        },
        NodeRef::File(f) => Item {
            name: f.name.clone(),
            mtime: f.mtime,
            size: f.size,
            mime: Some(f.mime()),
            dir: None,
        },
    }
}
