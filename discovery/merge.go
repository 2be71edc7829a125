package discovery

import (
	"context"
	"fmt"
	"sort"
)

// Merge returns a Source whose snapshots are the union, by endpoint ID, of
// the snapshots of sources; when two sources know the same ID, the first
// source in the list wins. A snapshot is sent as soon as any source has
// delivered one, and again whenever one of them changes, so a backend
// that is down does not hold back the others.
func Merge(sources ...Source) Source {
	if len(sources) == 1 {
		return sources[0]
	}
	return merged(sources)
}

type merged []Source

// update is one source's new snapshot.
type update struct {
	from int
	snap Snapshot
}

// Watch implements Source.
func (m merged) Watch(ctx context.Context, service string) (<-chan Snapshot, error) {
	ctx, cancel := context.WithCancel(ctx)
	updates := make(chan update)
	chans := make([]<-chan Snapshot, len(m))
	for i, src := range m {
		ch, err := src.Watch(ctx, service)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("discovery: merged watch of %s: %w", service, err)
		}
		chans[i] = ch
	}
	done := make(chan struct{})
	for i, ch := range chans {
		go func() {
			for snap := range ch {
				select {
				case updates <- update{i, snap}:
				case <-done:
					return
				}
			}
		}()
	}
	out := make(chan Snapshot, 1)
	go func() {
		defer close(out)
		defer close(done)
		defer cancel()
		latest := make([]*Snapshot, len(m))
		for {
			select {
			case <-ctx.Done():
				return
			case u := <-updates:
				latest[u.from] = &u.snap
				SendLatest(out, union(service, latest))
			}
		}
	}()
	return out, nil
}

// union merges the known snapshots, first source first.
func union(service string, snaps []*Snapshot) Snapshot {
	seen := map[string]bool{}
	out := Snapshot{Service: service}
	for _, s := range snaps {
		if s == nil {
			continue
		}
		for _, e := range s.Endpoints {
			if !seen[e.ID] {
				seen[e.ID] = true
				out.Endpoints = append(out.Endpoints, e)
			}
		}
	}
	sort.Slice(out.Endpoints, func(i, j int) bool { return out.Endpoints[i].ID < out.Endpoints[j].ID })
	return out
}

// SendLatest puts s on ch, a channel with a buffer of one that only its
// caller writes to, replacing a snapshot the reader has not taken yet: a
// slow reader gets the newest snapshot and never blocks the writer.
func SendLatest(ch chan Snapshot, s Snapshot) {
	for {
		select {
		case ch <- s:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
