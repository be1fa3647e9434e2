"""`hydra/launcher=parallel`: Hydra's Ray launcher, with each job's GPU share decided from the
Ray cluster and fractional shares spread over every GPU. Hydra takes launchers from this
package only; the behaviour is gan_experiments/placement.py."""

from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher


class ParallelLauncher(RayLauncher):
    # gan_experiments is imported in the method: every Hydra app's plugin scan imports this.
    def launch(self, job_overrides, initial_job_idx):
        from gan_experiments import placement

        return placement.launch(self, job_overrides, initial_job_idx)
