r"""The dashboard's library side, one job per module; :mod:`captum_topk.dashboard_data`
re-exports what the Streamlit app uses.

* :mod:`.roots`: the folders the dashboard may touch and safe paths inside them;
* :mod:`.spec`: :class:`~.spec.JobSpec`, what a job mines;
* :mod:`.runs`: run folders on disk, opened with their model and images;
* :mod:`.jobs`: mining a job with progress, the embedded default run, ONNX export;
* :mod:`.views`: a channel's patches, projections, histogram, classes; filters;
* :mod:`.embeddings`: pooled embeddings, PCA, neighbours, thumbnails;
* :mod:`.comparisons`: pretrained vs fine-tuned runs through :mod:`captum_topk.compare`.
"""
