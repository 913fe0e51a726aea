"""The dispatcher's private machinery: its core loop, where jobs go (brokers), and fan-in."""
