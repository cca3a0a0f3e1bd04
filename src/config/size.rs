//! Byte counts written the human way: `bwlimit = "50MiB"`, `upload_batch_bytes = "32 MiB"`, or
//! a plain integer of bytes.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Units accepted after the number, case-insensitively: SI (powers of 1000) and IEC (powers of
/// 1024). A bare `K`, `M` or `G` is refused: tools disagree on whether it means 1000 or 1024.
const UNITS: [(&str, u64); 7] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
];

/// A number of bytes (or bytes per second, for `bwlimit`): an integer, or a string such as
/// `"50MiB"`, `"1.5 GB"`, `"800 kB/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The count.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let bad = |why: &str| {
            format!(
                "`{text}` is not a size{why}: write bytes as an integer or with a unit, like \
                 \"50MiB\", \"800 kB\" or \"1.5 GB\" (units B, kB, MB, GB, KiB, MiB, GiB)"
            )
        };
        let trimmed = text.trim();
        let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let scale = if unit.is_empty() {
            1
        } else {
            match UNITS.iter().find(|(name, _)| *name == unit) {
                Some(&(_, scale)) => scale,
                None if matches!(unit.as_str(), "k" | "m" | "g") => {
                    return Err(bad(" (a bare K, M or G is ambiguous: say kB or KiB)"))
                }
                None => return Err(bad("")),
            }
        };
        let value: f64 = number.parse().map_err(|_| bad(""))?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad(" (too large)"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    /// The largest IEC unit that divides the count exactly, else plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = ["GiB", "MiB", "KiB"]
            .into_iter()
            .zip([1u64 << 30, 1 << 20, 1 << 10])
            .find(|&(_, scale)| self.0 >= scale && self.0.is_multiple_of(scale));
        match unit {
            Some((name, scale)) => write!(f, "{}{name}", self.0 / scale),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct Size;
        impl Visitor<'_> for Size {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes, or a size like \"50MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative: a size counts bytes")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_si_and_iec_units() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("800 kB", 800_000),
            ("50MiB", 50 << 20),
            ("50 mib", 50 << 20),
            ("1.5 GB", 1_500_000_000),
            ("2GiB", 2 << 30),
            (" 10 MB/s ", 10_000_000),
            ("0.5KiB", 512),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_how_to_write_one() {
        for text in [
            "", "MiB", "fast", "10 MiBs", "-5MB", "1e3", "10 M", "1..2kB", "1e30GB",
        ] {
            let err = text.parse::<ByteSize>().unwrap_err();
            assert!(
                err.contains("is not a size") && err.contains("50MiB"),
                "{text}: {err}"
            );
        }
        assert!("10M".parse::<ByteSize>().unwrap_err().contains("ambiguous"));
        assert!("99999999999GiB"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_show_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(32 << 20).to_string(), "32MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536");
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
        assert_eq!(ByteSize(1_000_000).to_string(), "1000000");
        assert_eq!(ByteSize(0).to_string(), "0");
    }

    #[test]
    fn sizes_deserialize_from_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 1024\nb = \"4 MiB\"").unwrap();
        assert_eq!((t.a, t.b), (ByteSize(1024), ByteSize(4 << 20)));
        assert!(toml::from_str::<T>("a = -1\nb = 1").is_err());
        assert!(toml::from_str::<T>("a = true\nb = 1").is_err());
    }
}
