"""The node agent: registers once, then keeps an outbound control channel to the broker."""
