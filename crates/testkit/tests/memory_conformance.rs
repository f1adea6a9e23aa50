//! The conformance suite on the embedded transport.

dualbus_testkit::conformance_suite!(dualbus_testkit::MemoryFactory);
