//! The conformance suite on the Redis Streams transport, against real `redis-server`
//! processes started per test on free ports.

dualbus_testkit::conformance_suite!(dualbus_testkit::RedisFactory);
