"""attnkd: knowledge distillation with exact, memory-linear attention and relation losses.

Entry points: ``attnkd.distill.run_distill`` (a whole recipe), ``attnkd.losses`` (pure loss
functions), ``attnkd.capture.Capture`` (q/k/v by forward hooks), ``attnkd.students.build_student``.
The command line is ``attnkd`` (see ``attnkd --help``).
"""

__version__ = "0.1.0"
