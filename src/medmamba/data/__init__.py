"""Datasets: MedMNIST .npz files, image folders, CSV manifests; and their transforms."""
from .folders import ImageListDataset, csv_manifest_splits, image_folder_splits, read_image
from .splits import group_split, kfold_indices, split_indices, stratified_split
from .medmnist import (DATA_ENV, MedMNIST, SubsetInfo, download, medmnist_file, medmnist_info, medmnist_subsets)
from .transforms import AugmentConfig, MatchChannels, build_transform

__all__ = ["AugmentConfig", "DATA_ENV", "ImageListDataset", "MatchChannels", "MedMNIST", "SubsetInfo",
           "build_transform", "csv_manifest_splits", "download", "image_folder_splits", "medmnist_file",
           "group_split", "kfold_indices", "medmnist_info", "medmnist_subsets", "read_image", "split_indices",
           "stratified_split"]
