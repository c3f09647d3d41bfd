//! The harness of portico's fuzz targets. Every parser of outside input has one: a `#[test]`
//! in its crate that calls [`check!`] with the target's name and a function that must never
//! panic, whatever bytes it is given.
//!
//! [`check!`] runs the target on
//! 1. each file of its checked-in seed corpus, `fuzz/corpus/TARGET/` (valid inputs, and the
//!    inputs of bugs found so far);
//! 2. mutations of those seeds (bits flipped, bytes inserted, removed, repeated, seeds
//!    spliced), which reach far deeper into a structured format than random bytes;
//! 3. bolero's engine: random inputs under `cargo test`; coverage-guided (libFuzzer, AFL)
//!    under `cargo bolero test`.
//!
//! How long 2 and 3 run: `PORTICO_FUZZ_MS` milliseconds for the mutations (default 300, so
//! that `cargo test` stays quick), bolero's own `BOLERO_RANDOM_TEST_TIME_MS` or
//! `BOLERO_RANDOM_ITERATIONS` for the rest; `scripts/fuzz` sets both. Under a
//! coverage-guided engine (`cfg(fuzzing)`), only the engine runs, started from the corpus
//! (`scripts/fuzz --coverage`). A failure prints the input, to be added to the corpus once
//! fixed.

pub use bolero;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the seed corpora live: `fuzz/corpus/` at the workspace's root.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The seeds of `target`, sorted by file name.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .collect()
}

/// Runs a fuzz target: its seeds and their mutations ([`replay`]), then bolero's engine.
/// Used in a `#[test]` of the crate whose parser it is: `portico_fuzz::check!("name", |data|
/// parse(data))`.
#[macro_export]
macro_rules! check {
    ($target:expr, $run:expr) => {{
        let run = $crate::target($run);
        if !cfg!(fuzzing) {
            $crate::replay($target, &run);
        }
        // Panics are what the engine looks for; the target holds no state across inputs.
        let run = ::std::panic::AssertUnwindSafe(run);
        let run = &run;
        $crate::bolero::check!().for_each(move |input: &[u8]| run(input));
    }};
}

/// `run`, typed as a target: a function of any bytes.
pub fn target<F: Fn(&[u8])>(run: F) -> F {
    run
}

/// Runs `target` on its seeds and their mutations; panics (failing the test) with the input
/// when `run` panics on one.
pub fn replay(target: &str, run: &dyn Fn(&[u8])) {
    let seeds = seeds(target);
    assert!(
        !seeds.is_empty(),
        "{target}: no seed corpus in {}",
        corpus_dir(target).display()
    );
    let attempt = |input: &[u8], what: &str| {
        if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
            panic!(
                "{target}: panicked on {what} input {:?} ({} bytes)",
                String::from_utf8_lossy(input),
                input.len()
            );
        }
    };
    for seed in &seeds {
        attempt(seed, "seed");
    }
    let budget = std::env::var("PORTICO_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(300), Duration::from_millis);
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("PORTICO_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed),
    );
    let began = Instant::now();
    let mut runs = 0u64;
    while began.elapsed() < budget {
        let input = mutate(&mut rng, &seeds);
        attempt(&input, "mutated");
        runs += 1;
    }
    eprintln!("{target}: {} seeds, {runs} mutations", seeds.len());
}

/// One mutation of a random seed.
fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = input.len();
        match rng.u8(..6) {
            0 if len > 0 => {
                let at = rng.usize(..len);
                input[at] ^= 1 << rng.u8(..8);
            }
            1 => {
                let at = rng.usize(..=len);
                let byte = *rng.choice(INTERESTING).unwrap_or(&0);
                input.insert(at, byte);
            }
            2 if len > 0 => {
                let at = rng.usize(..len);
                let end = (at + rng.usize(1..=16)).min(len);
                input.drain(at..end);
            }
            3 if len > 0 => {
                // A run repeated: long values, many headers.
                let at = rng.usize(..len);
                let end = (at + rng.usize(1..=32)).min(len);
                let run = input[at..end].to_vec();
                for _ in 0..rng.usize(1..=64) {
                    input.splice(at..at, run.iter().copied());
                }
            }
            4 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let cut = rng.usize(..=input.len());
                let from = rng.usize(..=other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let at = rng.usize(..len);
                input[at] = *rng.choice(INTERESTING).unwrap_or(&0);
            }
            _ => input.push(rng.u8(..)),
        }
    }
    input
}

/// A request as fuzz targets take it: a request line (`METHOD TARGET VERSION`), header
/// lines (`name: value`), an empty line, the body; `\n` ends each line. The parts, as
/// bytes; `None` when there is no request line.
pub struct RawRequest<'a> {
    /// The method.
    pub method: &'a [u8],
    /// The request target.
    pub target: &'a [u8],
    /// Names and values.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// What follows the empty line.
    pub body: &'a [u8],
}

/// Splits `data` into a [`RawRequest`].
pub fn raw_request(data: &[u8]) -> Option<RawRequest<'_>> {
    let mut rest = data;
    let mut line = || -> Option<&[u8]> {
        let end = rest.iter().position(|b| *b == b'\n')?;
        let (line, after) = rest.split_at(end);
        rest = &after[1..];
        Some(line)
    };
    let first = line()?;
    let mut words = first.splitn(3, |b| *b == b' ');
    let method = words.next()?;
    let target = words.next()?;
    let mut headers = Vec::new();
    while let Some(header) = line() {
        if header.is_empty() {
            break;
        }
        let colon = header
            .iter()
            .position(|b| *b == b':')
            .unwrap_or(header.len());
        let value = header.get(colon + 1..).unwrap_or_default();
        let value = value.strip_prefix(b" ").unwrap_or(value);
        headers.push((&header[..colon], value));
    }
    Some(RawRequest {
        method,
        target,
        headers,
        body: rest,
    })
}

/// Bytes that parsers treat specially.
const INTERESTING: &[u8] = b"\r\n\0 :;,=/\\%\"'{}[]-.0123456789\x7f\xff\t\x0b";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_near_their_seeds() {
        let seeds = vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()];
        let mut rng = fastrand::Rng::with_seed(1);
        let mutated: Vec<Vec<u8>> = (0..100).map(|_| mutate(&mut rng, &seeds)).collect();
        assert!(mutated.iter().any(|m| m != &seeds[0]));
        assert!(mutated.iter().filter(|m| m.starts_with(b"GET")).count() > 30);
    }
}

/// The targets of parsers whose crates have integration tests (which cargo-bolero would
/// build with the engine's instrumentation, and fail to link): JWTs and JWKS documents,
/// topology files.
#[cfg(test)]
mod targets {
    use std::sync::Arc;

    /// Any `Authorization` value: its token, a whole verification against a key set; and
    /// the same bytes as a JWKS document. Never a panic.
    #[test]
    fn fuzz_jwt() {
        use portico_gateway::jwks::{Jwks, KeySet};
        use portico_gateway::jwt::Authorizer;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let keys = KeySet::parse(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .expect("a key set");
        let authorizer = Authorizer::new(
            "https://issuer.example".into(),
            vec!["api".into()],
            60,
            Arc::new(Jwks::fixed(keys)),
        );
        crate::check!("jwt", |data: &[u8]| {
            let _ = KeySet::parse(data);
            let Ok(token) = Authorizer::token_of(data) else {
                return;
            };
            let _ = rt.block_on(authorizer.verify(token, &["read".into()], 1_800_000_000));
        });
    }

    /// Any topology file: a configuration or errors with their key paths, never a panic.
    #[test]
    fn fuzz_topology() {
        crate::check!("topology", |data: &[u8]| {
            let text = String::from_utf8_lossy(data);
            let _ = portico_config::parse(&text, "fuzz.toml");
        });
    }
}
