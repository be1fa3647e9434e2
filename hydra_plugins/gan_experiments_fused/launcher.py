"""`hydra/launcher=fused`: a sweep's jobs that differ only in `seed` train as one model in this
process (gan_experiments/fused.py). Hydra takes launchers from this package only."""

from hydra._internal.core_plugins.basic_launcher import BasicLauncher


class FusedLauncher(BasicLauncher):
    # gan_experiments is imported in the method: every Hydra app's plugin scan imports this.
    def launch(self, job_overrides, initial_job_idx):
        from gan_experiments import fused

        return fused.launch(self, job_overrides, initial_job_idx)
