"""Knowledge distillation: the student learns the labels and the teacher's output distribution.

loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T), on exactly the
positions the task trains on (the label word, the answer tokens, the class head) and over its classes
(for label words: the label words' logits, not the whole vocabulary), summed and then
normalised like every lmtune loss. The teacher runs in eval mode without gradients, in a 16-bit
dtype by default; it must share the student's tokenizer, since the two are compared token by token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.errors import ConfigError


class DistilledTask:
    """The task, with its training loss mixed with the teacher's; everything else is the task's."""

    def __init__(self, task, teacher, alpha: float, temperature: float):
        self.task, self.teacher, self.alpha, self.temperature = task, teacher, alpha, temperature

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, inputs):
        logits, targets = self.task.logits_and_targets(model, inputs)
        with torch.no_grad():
            teacher_logits, _ = self.task.logits_and_targets(self.teacher, inputs)
        if teacher_logits.shape != logits.shape:
            raise ConfigError(f"distill.teacher predicts {teacher_logits.shape[-1]} classes where the student has "
                              f"{logits.shape[-1]}; teacher and student need the same label space")
        t = self.temperature
        student_classes, teacher_classes = self.task.classes(logits), self.task.classes(teacher_logits.float())
        soft = F.kl_div(F.log_softmax(student_classes / t, -1), F.log_softmax(teacher_classes / t, -1),
                        log_target=True, reduction="sum") * t * t
        hard = F.cross_entropy(logits, targets, reduction="sum")
        return self.alpha * hard + (1 - self.alpha) * soft, targets.numel()
