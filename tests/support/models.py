"""Small but real models for tests, each built in well under a second on a CPU."""

from __future__ import annotations

import torch

from cxrdistill.models import (
    CNNStudent,
    CNNStudentConfig,
    CNNTeacher,
    CNNTeacherConfig,
    StudentViT,
    StudentViTConfig,
    TeacherViT,
    TeacherViTConfig,
)

# Small but real configurations, so each test takes well under a second on a CPU.
CASES = {
    "teacher-vit": (TeacherViT, TeacherViTConfig(image_size=64, patch_size=16, depth=3, embed_dim=48, num_heads=3)),
    "student-vit-28": (StudentViT, StudentViTConfig(image_size=28, depth=2, embed_dim=48)),
    "student-vit-56": (StudentViT, StudentViTConfig(image_size=56, depth=2, embed_dim=48)),
    # a hybrid ViT: EfficientNet-Lite0's stride-16 features are the tokens
    "teacher-vit-hybrid": (
        TeacherViT,
        TeacherViTConfig(image_size=64, patch_size=16, stem="efficientnet_lite0", depth=2, embed_dim=48, num_heads=3),
    ),
    # hybrid students: EfficientNet-Lite0 stages with the low-resolution strides give 7 x 7 tokens at 28 px
    "student-vit-hybrid-lowres": (
        StudentViT,
        StudentViTConfig(image_size=28, patch_size=4, stem="efficientnet_lite0_lowres", depth=2, embed_dim=48),
    ),
    "student-vit-hybrid-small": (
        StudentViT,
        StudentViTConfig(image_size=28, patch_size=4, stem="efficientnet_lite0_small", depth=2, embed_dim=48),
    ),
    "cnn-teacher": (CNNTeacher, CNNTeacherConfig(image_size=64)),
    "cnn-student": (CNNStudent, CNNStudentConfig(image_size=28)),
    # a deep stem (three 3x3 convolutions) instead of ResNet18's single 7x7 one
    "cnn-student-deep-stem": (CNNStudent, CNNStudentConfig(image_size=28, timm_name="resnet10t")),
}


def build(name: str, seed: int = 0):
    cls, config = CASES[name]
    torch.manual_seed(seed)
    return cls(config).eval()


def images_for(model, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.config.image_size
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def tb_model(seed: int = 0) -> CNNStudent:
    """An untrained 28-px TB CNN (two global classes, no local labels)."""
    torch.manual_seed(seed)
    config = CNNStudentConfig(image_size=28, stem="lowres", global_labels=("not_tb", "tb"), local_labels=())
    return CNNStudent(config).eval()


def small_student(seed: int = 0) -> StudentViT:
    """An untrained two-layer 28-px ViT student."""
    torch.manual_seed(seed)
    return StudentViT(StudentViTConfig(depth=2, embed_dim=48)).eval()
