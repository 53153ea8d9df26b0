//! The XDP shield check's raw SYN sender and reply capture: in the test
//! kit, which the benchmark's figure 10 shares.

pub use sdm_testkit::shield::*;
