"""The experiment: plan its jobs (teacher once, then arms x seeds), run them, and write one row per job.

    from leankd.experiment import run_experiment
    rows = run_experiment(load_config("configs/demo/cifar10-resnet20-resnet8.yaml"), "../shared/data", "runs")
"""
from leankd.experiment.run import obtain_teacher, run_experiment

__all__ = ["obtain_teacher", "run_experiment"]
