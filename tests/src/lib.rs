//! Shared end-to-end test harness.
