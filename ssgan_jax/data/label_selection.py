"""Choosing which images to label: the `representative` option of --label_selection.

Within each class, k-means (k = labels per class) on the examples' principal components, and
the example nearest each centroid is labeled: a stand-in for an annotator who labels typical
examples rather than random ones.
"""
import numpy as np
from sklearn import cluster, decomposition

PCA_COMPONENTS = 50


def pca_features(examples: np.ndarray, seed: int) -> np.ndarray:
  """Examples (images or vectors) as their first PCA_COMPONENTS principal components."""
  flat = examples.reshape(len(examples), -1).astype(np.float32)
  if examples.dtype == np.uint8:
    flat /= 255.0
  components = min(PCA_COMPONENTS, flat.shape[1], len(flat))
  return decomposition.PCA(components, random_state=seed).fit_transform(flat)


def representative(examples: np.ndarray, labels: np.ndarray, per_class: int,
                   seed: int) -> np.ndarray:
  """Sorted positions of `per_class` examples of each class, nearest the class's k-means centroids."""
  features = pca_features(examples, seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    kmeans = cluster.KMeans(per_class, n_init=3, random_state=seed).fit(features[members])
    distances = np.linalg.norm(features[members] - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    for k in range(per_class):
      in_cluster = np.flatnonzero(kmeans.labels_ == k)
      chosen.append(members[in_cluster[np.argmin(distances[in_cluster])]])
  return np.sort(np.asarray(chosen))
