//! Downloads over HTTP(S) with resume, retries and sha256 checks (being written).
