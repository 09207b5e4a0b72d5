//! manifest.json (being written).
