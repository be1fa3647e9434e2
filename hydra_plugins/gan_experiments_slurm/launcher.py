"""`hydra/launcher=slurm`: hydra-submitit-launcher's SlurmLauncher, which also checkpoints and
requeues a job at its time limit and says a refused submission in one paragraph. Hydra takes
launchers from this package only; the behaviour is gan_experiments/slurm.py."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit


class SlurmLauncher(Submitit):
    # The base class by name, not super(): Hydra's plugin scan executes this module again in
    # each job, so `SlurmLauncher` there is a new class and super() would reject `self`.
    # gan_experiments is imported in the methods: every Hydra app's plugin scan imports this.
    def launch(self, job_overrides, initial_job_idx):
        from gan_experiments import slurm

        return slurm.launch(lambda: Submitit.launch(self, job_overrides, initial_job_idx),
                            self.config.jobs_per_gpu)

    def __call__(self, *args, **kwargs):
        """One job, on its node (submitit calls this there, and again after a requeue)."""
        from gan_experiments import slurm

        return slurm.run_job(lambda: Submitit.__call__(self, *args, **kwargs))
