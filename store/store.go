// Package store keeps the appliance's durable state in a bbolt file: the
// schema version, the history of config revisions, the last applied
// desired state and the address leases of Kubernetes Services.
//
// Each concern has its own top-level bucket, so later features (IPAM leases,
// commit-confirmed state) add buckets without touching the existing ones.
// Every write is one bbolt transaction, which is fsynced before the method
// returns. A Store is safe for concurrent use.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout of the buckets written by this package.
// Version 2 keeps the applied state in parts; version 1 kept it whole, under
// one key, which the daemon still reads as a part. The leases bucket came
// later without a new version: Open creates it in a file that lacks it, and
// a binary that knows no leases ignores it, which costs it nothing as it
// hands out no addresses.
const SchemaVersion = 2

// KeepRevisions is how many of the newest revisions are kept; older ones
// are pruned when a revision is added.
const KeepRevisions = 1000

// DefaultPath is where the appliance keeps its store.
const DefaultPath = "/var/lib/appliance/state.db"

// lockTimeout bounds the wait for the file lock, so a second daemon fails
// fast instead of hanging behind the first.
const lockTimeout = time.Second

// ErrNotFound is returned, wrapped, when a revision or the applied state is
// absent. Test for it with errors.Is.
var ErrNotFound = errors.New("not found")

var (
	bucketMeta      = []byte("meta")
	bucketRevisions = []byte("revisions")
	bucketApplied   = []byte("applied")
	bucketLeases    = []byte("leases")

	keySchemaVersion = []byte("schema_version")
)

// Store is the appliance's durable state.
type Store struct {
	db   *bolt.DB
	keep int // revisions kept; KeepRevisions except in tests
}

// Revision is one committed version of the whole config.
type Revision struct {
	Number  uint64    `json:"number"`
	Time    time.Time `json:"time"`
	User    string    `json:"user"`
	Message string    `json:"message"`
	Config  []byte    `json:"config"` // YAML text of the whole config
}

// Open opens the store at path, creating the file (and its directory) if
// missing. It fails if another process holds the file, or if the file was
// written by a newer schema than this binary understands.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: open %s: locked by another process?", path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &Store{db: db, keep: KeepRevisions}, nil
}

// initSchema creates missing buckets and checks the schema version. It runs
// in one transaction, so a new file is never left half-initialised.
func initSchema(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketRevisions, bucketApplied, bucketLeases} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	v := meta.Get(keySchemaVersion)
	if v == nil {
		return meta.Put(keySchemaVersion, itob(SchemaVersion))
	}
	if len(v) != 8 {
		return fmt.Errorf("schema version: malformed value %x", v)
	}
	version := binary.BigEndian.Uint64(v)
	if version > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than this binary supports (%d)", version, SchemaVersion)
	}
	// Migrations from an older schema go here, one step per version, in
	// this transaction, ending with the new version written to meta.
	// 1 → 2: the whole applied state under "desired_state" becomes the one
	// part of that name, which the daemon reads and replaces by its parts
	// on its first save; the version makes an older binary refuse the file
	// rather than miss the parts.
	if version < SchemaVersion {
		return meta.Put(keySchemaVersion, itob(SchemaVersion))
	}
	return nil
}

// Close releases the file and its lock.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.db.Path(), err)
	}
	return nil
}

// AddRevision stores r under the next revision number, ignoring r.Number,
// and returns that number. Revisions beyond the newest KeepRevisions are
// pruned in the same transaction. The revision is on disk when it returns.
func (s *Store) AddRevision(r Revision) (uint64, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRevisions)
		// The bucket sequence is persistent, so numbers are never reused,
		// even after pruning.
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		r.Number = n
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := b.Put(itob(n), v); err != nil {
			return err
		}
		return prune(b, n, s.keep)
	})
	if err != nil {
		return 0, fmt.Errorf("store: add revision: %w", err)
	}
	return r.Number, nil
}

// prune deletes revisions older than the newest keep, given that newest is
// the latest number. Numbers are contiguous, so everything up to
// newest-keep goes.
func prune(b *bolt.Bucket, newest uint64, keep int) error {
	if newest <= uint64(keep) {
		return nil
	}
	last := itob(newest - uint64(keep))
	c := b.Cursor()
	// Restart from First after each delete: bbolt cursors may skip a key
	// when Next follows Delete.
	for k, _ := c.First(); k != nil && bytes.Compare(k, last) <= 0; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Revision returns revision n, or an error wrapping ErrNotFound.
func (s *Store) Revision(n uint64) (Revision, error) {
	var r Revision
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRevisions).Get(itob(n))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &r)
	})
	if err != nil {
		return Revision{}, fmt.Errorf("store: revision %d: %w", n, err)
	}
	return r, nil
}

// LatestRevision returns the newest revision, or an error wrapping
// ErrNotFound when there is none.
func (s *Store) LatestRevision() (Revision, error) {
	var r Revision
	err := s.db.View(func(tx *bolt.Tx) error {
		_, v := tx.Bucket(bucketRevisions).Cursor().Last()
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &r)
	})
	if err != nil {
		return Revision{}, fmt.Errorf("store: latest revision: %w", err)
	}
	return r, nil
}

// Revisions returns every kept revision, newest first.
func (s *Store) Revisions() ([]Revision, error) {
	var rs []Revision
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRevisions).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var r Revision
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("revision %d: %w", binary.BigEndian.Uint64(k), err)
			}
			rs = append(rs, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: revisions: %w", err)
	}
	return rs, nil
}

// SaveApplied changes the last applied desired state, which is kept in
// parts (the daemon keeps one per VIP, so that a change rewrites only what
// changed), in one transaction: each part of put is stored under its key,
// each key of del removed, and with replace every other part removed too.
// On error nothing changed.
func (s *Store) SaveApplied(put map[string][]byte, del []string, replace bool) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApplied)
		if replace {
			if err := tx.DeleteBucket(bucketApplied); err != nil {
				return err
			}
			var err error
			if b, err = tx.CreateBucket(bucketApplied); err != nil {
				return err
			}
		}
		return change(b, put, del)
	})
	if err != nil {
		return fmt.Errorf("store: save applied state: %w", err)
	}
	return nil
}

// LoadApplied returns every part of the last applied desired state, or an
// error wrapping ErrNotFound if it has none.
func (s *Store) LoadApplied() (map[string][]byte, error) {
	parts, err := s.all(bucketApplied)
	if err == nil && len(parts) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: load applied state: %w", err)
	}
	return parts, nil
}

// SaveLeases changes the stored address leases in one transaction: each
// lease of put is stored under its key, each key of del removed (a key
// already gone is no error). On error nothing changed; on success the change
// is on disk.
func (s *Store) SaveLeases(put map[string][]byte, del []string) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return change(tx.Bucket(bucketLeases), put, del) })
	if err != nil {
		return fmt.Errorf("store: save leases: %w", err)
	}
	return nil
}

// LoadLeases returns every stored lease by key; none is an empty map, not
// an error.
func (s *Store) LoadLeases() (map[string][]byte, error) {
	leases, err := s.all(bucketLeases)
	if err != nil {
		return nil, fmt.Errorf("store: load leases: %w", err)
	}
	return leases, nil
}

// change removes each key of del from b (a key already gone is no error),
// then stores each value of put under its key.
func change(b *bolt.Bucket, put map[string][]byte, del []string) error {
	for _, k := range del {
		if err := b.Delete([]byte(k)); err != nil {
			return fmt.Errorf("delete %s: %w", k, err)
		}
	}
	for k, v := range put {
		if err := b.Put([]byte(k), v); err != nil {
			return fmt.Errorf("put %s: %w", k, err)
		}
	}
	return nil
}

// all returns every key and value of the bucket.
func (s *Store) all(bucket []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			// k and v point into the mmap and are valid only inside
			// the transaction.
			out[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	return out, err
}

// itob encodes n as a big-endian key, so byte order matches numeric order.
func itob(n uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, n)
}
