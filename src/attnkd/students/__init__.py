"""Build students from teachers (layer choice, narrowing, weight inheritance)."""

from attnkd.students.build import StudentReport, build_student, select_layers, student_config

__all__ = ["StudentReport", "build_student", "select_layers", "student_config"]
