"""Forgetting faces: a deleted photo's (`photos`, in the detection worker) and a user's
(`erasure`, in the grouping worker and `facefleet people erase`). The people side of a photo
deletion is `grouping.forget`."""
