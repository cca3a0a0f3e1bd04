//! Deterministic simulated Tapis data: systems, folders and files whose bytes are generated on
//! demand from the seed, so even large datasets cost only their metadata in memory.

use std::sync::{OnceLock, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::util::like_match;

/// The Tapis account the daemon uses (owner of the visible systems).
pub(crate) const TAPIS_USER: &str = "svc-webodm";
/// The pattern that selects flight systems (the daemon's default `system_pattern`).
pub(crate) const SYSTEM_PATTERN: &str = "ptdatax.project.*";
/// A special flight (with `decoys`) whose name holds HTML/markup characters: `<`, `>`, `"`,
/// `&` and `'`.
pub const HOSTILE_FLIGHT: &str = "Ridge <North> & \"East\" 'B'";
/// Folder below a flight that holds its images.
const IMAGES_DIR: [&str; 2] = ["code", "images"];
/// 2024-05-01T00:00:00Z: base of every generated modification time.
const BASE_MTIME: u64 = 1_714_521_600;
/// Size of the chunks a file's content is streamed in.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Tapis users of the dataset besides the daemon's account: system owners and share lists.
/// Some have a WebODM account (see `sharing::WEBODM_USERS`; `dave` only under another name).
pub(crate) const PEOPLE: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
/// Companion file names (lower case) that travel with the images.
const COMPANIONS: [&str; 3] = ["geo.txt", "image_groups.txt", "gcp_list.txt"];

/// Shape of a generated dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// Seed of every generated name, size and byte.
    pub seed: u64,
    /// Matching systems owned by the service account.
    pub systems: usize,
    /// Regular flights in each owned system (and in the shared system when `decoys` is on).
    pub flights_per_system: usize,
    /// Images in each regular flight.
    pub images_per_flight: usize,
    /// Mean image size in bytes; each image varies by up to ±25 %.
    pub image_size: u64,
    /// Adds one flight with this many images to the first system (forces file paging).
    pub big_flight_images: Option<usize>,
    /// Adds decoy systems and folders, a shared system and the special-case flights.
    pub decoys: bool,
    /// Puts companion files (`geo.txt`, `gcp_list.txt`, sometimes `image_groups.txt`; mixed
    /// case in one flight) and a decoy `notes.txt` into the images folder of odd-numbered
    /// regular flights.
    #[serde(default)]
    pub companions: bool,
}

impl DatasetSpec {
    /// The sample dataset of `demo`: 3 systems, 10 expected flights of about 40 images of
    /// about 20 KB, decoys on.
    pub fn demo() -> Self {
        DatasetSpec {
            seed: 42,
            systems: 3,
            flights_per_system: 2,
            images_per_flight: 40,
            image_size: 20_000,
            big_flight_images: None,
            decoys: true,
            companions: false,
        }
    }
}

/// Totals of what the daemon should end up with in WebODM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Flights to sync.
    pub flights: u64,
    /// Images in those flights.
    pub images: u64,
    /// Bytes of those images.
    pub bytes: u64,
    /// Companion files in those flights' images folders (not counted in `images`).
    #[serde(default)]
    pub companions: u64,
    /// Bytes of those companion files.
    #[serde(default)]
    pub companion_bytes: u64,
}

/// One flight the daemon should sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedFlight {
    /// Tapis system id.
    pub system_id: String,
    /// Flight folder name.
    pub flight: String,
    /// Its images, sorted by name.
    pub images: Vec<ExpectedImage>,
    /// Its companion files (`geo.txt`, `image_groups.txt`, `gcp_list.txt` in any case),
    /// sorted case-insensitively by name.
    #[serde(default)]
    pub companions: Vec<ExpectedImage>,
}

/// One image (or companion file) of an expected flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedImage {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// A generated dataset: systems with their file trees.
#[derive(Debug)]
pub struct Dataset {
    pub(crate) systems: Vec<SimSystem>,
}

/// A Tapis system of the dataset.
#[derive(Debug)]
pub(crate) struct SimSystem {
    pub id: String,
    pub owner: String,
    /// Users it is shared with (changed by `Sim::share_system` and `Sim::unshare_system`).
    pub shared_with: RwLock<Vec<String>>,
    /// Shared publicly: every user of the tenant may read it.
    pub public: bool,
    pub enabled: bool,
    pub host: String,
    pub root_dir: String,
    pub description: String,
    pub root: Dir,
}

/// A folder.
#[derive(Debug)]
pub(crate) struct Dir {
    pub name: String,
    pub mtime: u64,
    /// Sorted case-insensitively by name, as Tapis lists them.
    pub children: Vec<Node>,
}

/// A regular file whose bytes are derived from `key`.
#[derive(Debug)]
pub(crate) struct File {
    pub name: String,
    pub mtime: u64,
    pub size: u64,
    key: u64,
    kind: Kind,
    sha: OnceLock<String>,
}

/// Entry of a folder.
#[derive(Debug)]
pub(crate) enum Node {
    Dir(Dir),
    File(File),
}

/// What a file's bytes look like.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Jpeg,
    Png,
    Text,
    /// These first bytes, then random bytes.
    Magic(&'static [u8]),
}

impl Node {
    /// Entry name.
    pub fn name(&self) -> &str {
        match self {
            Node::Dir(d) => &d.name,
            Node::File(f) => &f.name,
        }
    }
}

impl Dir {
    fn new(name: &str, mtime: u64, mut children: Vec<Node>) -> Dir {
        children.sort_by(|a, b| {
            (a.name().to_lowercase(), a.name()).cmp(&(b.name().to_lowercase(), b.name()))
        });
        Dir {
            name: name.to_owned(),
            mtime,
            children,
        }
    }

    /// The entry at a relative path (empty = this folder).
    pub fn lookup<'a>(&'a self, segments: &[String]) -> Option<NodeRef<'a>> {
        let mut cur = NodeRef::Dir(self);
        for seg in segments {
            let NodeRef::Dir(dir) = cur else { return None };
            cur = dir.children.iter().find(|c| c.name() == seg)?.as_ref();
        }
        Some(cur)
    }
}

/// A borrowed entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NodeRef<'a> {
    Dir(&'a Dir),
    File(&'a File),
}

impl Node {
    /// Borrowed view.
    pub fn as_ref(&self) -> NodeRef<'_> {
        match self {
            Node::Dir(d) => NodeRef::Dir(d),
            Node::File(f) => NodeRef::File(f),
        }
    }
}

impl File {
    /// A file of `size` bytes that start with `magic` and continue with bytes derived from
    /// `key` (WebODM's processing results).
    pub fn synthetic(name: &str, key: u64, size: u64, magic: &'static [u8]) -> File {
        File {
            name: name.to_owned(),
            mtime: 0,
            size,
            key,
            kind: Kind::Magic(magic),
            sha: OnceLock::new(),
        }
    }

    /// SHA-256 of the content (computed once, on first use).
    pub fn sha256(&self) -> &str {
        self.sha.get_or_init(|| {
            let mut h = Sha256::new();
            for chunk in self.reader() {
                h.update(&chunk);
            }
            hex::encode(h.finalize())
        })
    }

    /// The content, as an iterator of chunks.
    pub fn reader(&self) -> ContentReader {
        ContentReader {
            key: self.key,
            kind: self.kind,
            size: self.size,
            pos: 0,
        }
    }

    /// MIME type Tapis reports for it.
    pub fn mime(&self) -> &'static str {
        match self.kind {
            Kind::Jpeg => "image/jpeg",
            Kind::Png => "image/png",
            Kind::Text => "text/plain",
            Kind::Magic(_) => "application/octet-stream",
        }
    }
}

/// Generates a file's bytes chunk by chunk.
#[derive(Debug)]
pub(crate) struct ContentReader {
    key: u64,
    kind: Kind,
    size: u64,
    pos: u64,
}

impl Iterator for ContentReader {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.size {
            return None;
        }
        let len = (self.size - self.pos).min(CHUNK as u64) as usize;
        let mut buf = Vec::with_capacity(len);
        let end = self.pos + len as u64;
        let mut pos = self.pos;
        while pos < end {
            // One mixed word gives 8 bytes.
            let word = mix(self
                .key
                .wrapping_add((pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let bytes = word.to_le_bytes();
            for i in (pos % 8)..8.min(end - pos + pos % 8) {
                buf.push(shape(self.kind, pos + i - pos % 8, bytes[i as usize]));
            }
            pos += 8 - pos % 8;
        }
        self.pos = end;
        Some(Bytes::from(buf))
    }
}

/// Byte `pos` of a file of `kind` whose random byte there is `b`.
fn shape(kind: Kind, pos: u64, b: u8) -> u8 {
    let magic: &[u8] = match kind {
        Kind::Jpeg => &[0xFF, 0xD8, 0xFF, 0xE0],
        Kind::Png => &[0x89, b'P', b'N', b'G'],
        Kind::Text => &[],
        Kind::Magic(m) => m,
    };
    match magic.get(pos as usize) {
        Some(&m) => m,
        None => match kind {
            Kind::Text if pos % 61 == 60 => b'\n',
            Kind::Text => b'a' + b % 26,
            _ => b,
        },
    }
}

/// SplitMix64 finaliser: a good, stable 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a file name is an image (`.jpg`/`.jpeg`, any case).
pub(crate) fn is_image(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

/// Whether a file name is a companion file (`geo.txt`, `image_groups.txt`, `gcp_list.txt`,
/// any case).
pub(crate) fn is_companion(name: &str) -> bool {
    COMPANIONS.contains(&name.to_lowercase().as_str())
}

/// Builds the file trees of one system.
struct Gen<'a> {
    spec: &'a DatasetSpec,
    system: String,
    /// The first generated system (its Flight001 has mixed-case companion names).
    first: bool,
}

impl Gen<'_> {
    fn key(&self, path: &str) -> u64 {
        let digest = Sha256::digest(format!("{}/{}/{}", self.spec.seed, self.system, path));
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn file(&self, path: &str, name: &str, approx: u64) -> Node {
        let kind = if is_image(name) {
            Kind::Jpeg
        } else if name.to_lowercase().ends_with(".png") {
            Kind::Png
        } else {
            Kind::Text
        };
        let key = self.key(&format!("{path}/{name}"));
        let spread = approx / 2;
        let size = (approx - approx / 4 + mix(key ^ 0x51) % (spread + 1)).max(4);
        Node::File(File {
            name: name.to_owned(),
            mtime: BASE_MTIME + mix(key ^ 0x77) % (30 * 86_400),
            size,
            key,
            kind,
            sha: OnceLock::new(),
        })
    }

    fn dir(&self, path: &str, name: &str, children: Vec<Node>) -> Node {
        Node::Dir(Dir::new(
            name,
            BASE_MTIME + mix(self.key(&format!("{path}/{name}/")) ^ 0x77) % (30 * 86_400),
            children,
        ))
    }

    /// A flight folder `<name>/code/images` holding `images` plus `extra` files; `sub`
    /// adds an `images/sub/` folder.
    fn flight(&self, name: &str, images: &[String], extra: &[&str], sub: bool) -> Node {
        let images_path = format!("{name}/code/images");
        let size = self.spec.image_size;
        let mut files: Vec<Node> = images
            .iter()
            .map(|i| self.file(&images_path, i, size))
            .collect();
        files.extend(extra.iter().map(|e| {
            let approx = if is_companion(e) { 1_500 } else { 2_000 };
            self.file(&images_path, e, approx)
        }));
        if sub {
            let sub_path = format!("{images_path}/sub");
            let subs = vec![
                self.file(&sub_path, "IMG_9001.jpg", size),
                self.file(&sub_path, "IMG_9002.jpg", size),
            ];
            files.push(self.dir(&images_path, "sub", subs));
        }
        let images_dir = self.dir(&format!("{name}/code"), IMAGES_DIR[1], files);
        let code = self.dir(name, IMAGES_DIR[0], vec![images_dir]);
        self.dir("", name, vec![code])
    }

    fn regular_flights(&self, count: usize) -> Vec<Node> {
        (1..=count)
            .map(|f| {
                let extra = if self.spec.companions {
                    companions(self.first, f)
                } else {
                    Vec::new()
                };
                self.flight(
                    &format!("Flight{f:03}"),
                    &img_names(self.spec.images_per_flight),
                    &extra,
                    false,
                )
            })
            .collect()
    }

    /// Folders that are not flights.
    fn decoy_folders(&self) -> Vec<Node> {
        let size = self.spec.image_size;
        vec![
            // Images but no code/ folder.
            self.dir(
                "",
                "NoCodeFolder",
                vec![self.dir(
                    "NoCodeFolder",
                    "images",
                    vec![self.file("NoCodeFolder/images", "IMG_0001.jpg", size)],
                )],
            ),
            // code/ without images/.
            self.dir(
                "",
                "NoImagesDir",
                vec![self.dir(
                    "NoImagesDir",
                    "code",
                    vec![self.file("NoImagesDir/code", "run.txt", 500)],
                )],
            ),
            self.flight("OnlyPngAndTxt", &[], &["a.png", "b.txt"], false),
            self.flight("EmptyImages", &[], &[], false),
            self.file("", "README.txt", 800),
        ]
    }
}

/// The extra files of regular flight number `f` when companions are on: odd flights get
/// `geo.txt`, `gcp_list.txt` (every third also `image_groups.txt`) and a decoy `notes.txt`;
/// the first system's Flight001 spells them `Geo.TXT` and `GCP_List.txt`.
fn companions(first_system: bool, f: usize) -> Vec<&'static str> {
    if f.is_multiple_of(2) {
        return Vec::new();
    }
    let mut names = if first_system && f == 1 {
        vec!["Geo.TXT", "GCP_List.txt"]
    } else {
        vec!["geo.txt", "gcp_list.txt"]
    };
    if f.is_multiple_of(3) {
        names.push("image_groups.txt");
    }
    names.push("notes.txt");
    names
}

/// Owner, share list and public flag of generated system number `i`: the first and every
/// even one belong to the daemon's account and are shared with three people; odd ones belong
/// to a person and are shared with the account and two people; the second is public and
/// shared with one person only (the account sees it because it is public).
fn access(i: usize) -> (&'static str, Vec<&'static str>, bool) {
    let p = |k: usize| PEOPLE[(i + k) % PEOPLE.len()];
    match i {
        1 => (p(0), vec![p(2)], true),
        i if i % 2 == 1 => (p(0), vec![TAPIS_USER, p(1), p(3)], false),
        _ => (TAPIS_USER, vec![p(0), p(2), p(4)], false),
    }
}

/// `IMG_0001.jpg` … `IMG_<n>.jpg`.
fn img_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("IMG_{i:04}.jpg")).collect()
}

impl Dataset {
    /// Generates the dataset of `spec` (the same spec always gives the same dataset).
    pub fn generate(spec: &DatasetSpec) -> Dataset {
        let words = [
            "alpha", "bravo", "coral", "delta", "ember", "fjord", "gulf", "harbor",
        ];
        let mut systems = Vec::new();
        for i in 0..spec.systems {
            let word = words[(mix(spec.seed ^ i as u64) % words.len() as u64) as usize];
            let id = format!("ptdatax.project.{word}-{:03}", i + 1);
            let g = Gen {
                spec,
                system: id.clone(),
                first: i == 0,
            };
            let mut top = g.regular_flights(spec.flights_per_system);
            if i == 0 {
                if let Some(n) = spec.big_flight_images {
                    top.push(g.flight("BigFlight", &img_names(n), &[], false));
                }
                if spec.decoys {
                    let special = [
                        "IMG_0001.JPG",
                        "IMG_0002.JPEG",
                        "IMG_0003.jpg",
                        "IMG_0004.Jpg",
                    ];
                    let special: Vec<String> = special.iter().map(|s| s.to_string()).collect();
                    top.push(g.flight("Vuelo Año 2", &special, &[], false));
                    // A name that must be escaped wherever it is shown (HTML, mail, JSON).
                    top.push(g.flight(HOSTILE_FLIGHT, &img_names(2), &[], false));
                    top.push(g.flight(
                        "Flight Extras",
                        &img_names(3),
                        &["notes.txt", "thumb.png"],
                        true,
                    ));
                    top.extend(g.decoy_folders());
                }
            }
            let (owner, shared_with, public) = access(i);
            let mut sys = system(&g, owner, &shared_with, true, top);
            sys.public = public;
            systems.push(sys);
        }
        if spec.decoys {
            // (id, owner, shared with the account, enabled)
            let decoys = [
                ("ptdatax.project.shared-lab", "alice", true, true),
                ("ptdatax.project.hidden", "bob", false, true),
                ("ptdatax.project.disabled", TAPIS_USER, false, false),
                ("ptdatax.other.x", TAPIS_USER, false, true),
                ("something.ptdatax.project.y", TAPIS_USER, false, true),
                ("PTDATAX.PROJECT.UPPER", TAPIS_USER, false, true),
            ];
            for (id, owner, shared, enabled) in decoys {
                let g = Gen {
                    spec,
                    system: id.to_owned(),
                    first: false,
                };
                let shared_with = if shared { vec![TAPIS_USER] } else { vec![] };
                let flights = g.regular_flights(spec.flights_per_system.max(1));
                systems.push(system(&g, owner, &shared_with, enabled, flights));
            }
        }
        Dataset { systems }
    }

    /// Totals over [`Dataset::expected_flights`] (without hashing any bytes).
    pub fn expected(&self) -> Expected {
        let mut e = Expected::default();
        for f in self.flights() {
            e.flights += 1;
            e.images += f.images.len() as u64;
            e.bytes += f.images.iter().map(|f| f.size).sum::<u64>();
            e.companions += f.companions.len() as u64;
            e.companion_bytes += f.companions.iter().map(|f| f.size).sum::<u64>();
        }
        e
    }

    /// The flights the daemon should sync: in visible, enabled systems matching
    /// `ptdatax.project.*`, with at least one image directly in `<Flight>/code/images`.
    pub fn expected_flights(&self) -> Vec<ExpectedFlight> {
        let expected = |files: &[&File]| -> Vec<ExpectedImage> {
            files
                .iter()
                .map(|f| ExpectedImage {
                    name: f.name.clone(),
                    size: f.size,
                    sha256: f.sha256().to_owned(),
                })
                .collect()
        };
        self.flights()
            .into_iter()
            .map(|f| ExpectedFlight {
                system_id: f.system.id.clone(),
                flight: f.name.to_owned(),
                images: expected(&f.images),
                companions: expected(&f.companions),
            })
            .collect()
    }

    /// Expected flights with their image and companion files, sorted by system id then flight
    /// name.
    pub(crate) fn flights(&self) -> Vec<FlightFiles<'_>> {
        let mut out = Vec::new();
        for sys in &self.systems {
            if !sys.visible_to(TAPIS_USER) || !sys.enabled || !like_match(SYSTEM_PATTERN, &sys.id) {
                continue;
            }
            for node in &sys.root.children {
                let Node::Dir(flight) = node else { continue };
                let Some(NodeRef::Dir(images)) = flight.lookup(&IMAGES_DIR.map(String::from))
                else {
                    continue;
                };
                let files = |keep: fn(&str) -> bool| -> Vec<&File> {
                    images
                        .children
                        .iter()
                        .filter_map(|c| match c {
                            Node::File(f) if keep(&f.name) => Some(f),
                            _ => None,
                        })
                        .collect()
                };
                let found = FlightFiles {
                    system: sys,
                    name: flight.name.as_str(),
                    images: files(is_image),
                    companions: files(is_companion),
                };
                if !found.images.is_empty() {
                    out.push(found);
                }
            }
        }
        out.sort_by(|a, b| (&a.system.id, a.name).cmp(&(&b.system.id, b.name)));
        out
    }

    /// The system with this id, whoever may see it.
    pub(crate) fn system(&self, id: &str) -> Option<&SimSystem> {
        self.systems.iter().find(|s| s.id == id)
    }
}

/// An expected flight's files in the dataset.
pub(crate) struct FlightFiles<'a> {
    pub system: &'a SimSystem,
    pub name: &'a str,
    pub images: Vec<&'a File>,
    pub companions: Vec<&'a File>,
}

impl SimSystem {
    /// Whether `user` owns it, or it is shared with them or with everybody.
    pub fn visible_to(&self, user: &str) -> bool {
        self.owner == user || self.public || self.is_shared_with(user)
    }

    /// Whether it is shared with `user` by name.
    pub fn is_shared_with(&self, user: &str) -> bool {
        self.shares().iter().any(|u| u == user)
    }

    /// The users it is shared with by name.
    pub fn shares(&self) -> Vec<String> {
        self.shared_with.read().expect("shares lock").clone()
    }
}

fn system(
    g: &Gen<'_>,
    owner: &str,
    shared_with: &[&str],
    enabled: bool,
    top: Vec<Node>,
) -> SimSystem {
    let short = g.system.rsplit('.').next().unwrap_or_default().to_owned();
    SimSystem {
        id: g.system.clone(),
        owner: owner.to_owned(),
        shared_with: RwLock::new(shared_with.iter().map(|s| s.to_string()).collect()),
        public: false,
        enabled,
        host: "ls6.tacc.utexas.edu".to_owned(),
        root_dir: format!("/corral/projects/{short}"),
        description: format!("Simulated project storage {short}"),
        root: Dir::new("", BASE_MTIME, top),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_has_size_magic_and_is_stable() {
        let spec = DatasetSpec {
            image_size: 100_003,
            ..DatasetSpec::demo()
        };
        let g = Gen {
            spec: &spec,
            system: "s".into(),
            first: true,
        };
        let Node::File(f) = g.file("a", "IMG.jpg", spec.image_size) else {
            unreachable!()
        };
        let all: Vec<u8> = f.reader().flat_map(|c| c.to_vec()).collect();
        assert_eq!(all.len() as u64, f.size);
        assert_eq!(&all[..4], &[0xFF, 0xD8, 0xFF, 0xE0]);
        assert_eq!(hex::encode(Sha256::digest(&all)), f.sha256());
        let word = mix(f.key.wrapping_add(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
        assert_eq!(&all[8..16], &word);
    }
}
