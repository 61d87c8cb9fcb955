# The image half of dockyard.
#   core         domain types and role-split Protocols (no I/O)
#   reference    Docker reference parsing/normalisation
#   digest       digest parsing, hashing, verifying readers
#   mediatypes, manifest, platform   image formats and platform selection
#   content      content store (blobs by digest, ingests, labels)
#   leases, gc   garbage collection roots and sweep
#   snapshots/   overlayfs and native snapshotters
#   layers       safe tar apply (whiteouts) and diff
#   distribution registry client: auth, pull, push
#   archive      docker-save and OCI-layout archives, import/export
#   debootstrap  base images from a Debian mirror
