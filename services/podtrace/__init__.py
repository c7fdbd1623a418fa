"""`criplex trace pod POD_ID`: a pod start's spans from every process, drawn as a waterfall."""
