"""A stand-in for a Triton kernel object that counts its launches (tests that pin launch counts)."""


class LaunchCounter:
    """Wraps a kernel: counts ``kernel[grid](...)`` launches, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            return self.kernel[grid](*args, **kwargs)
        return launch
