"""The one quantiser: the plan (which tensor gets which bits), round-to-nearest export,
quantisation-aware training, and the quantised-tensor container."""
