// Command linearizability checks a recorded history of journal operations for
// linearizability with Porcupine (github.com/anishathalye/porcupine), against a
// sequential model of one persistence id's journal.
//
// Usage:
//
//	linearizability [-timeout 30s] [-html out.html] [history.json | -]
//
// The history is JSON (from the file, or stdin when the argument is "-" or absent):
//
//	{"ops": [
//	  {"client": 0, "id": "lin-1", "call": 1200, "return": 5300,
//	   "op": "write", "from": 1, "events": ["c0.3.0", "c0.3.1"], "result": "ok"},
//	  {"client": 1, "id": "lin-1", "call": 1500, "return": 2100,
//	   "op": "write", "from": 1, "events": ["c1.0.0"], "result": "conflict"},
//	  {"client": 2, "id": "lin-1", "call": 900, "return": null,
//	   "op": "write", "from": 3, "events": ["c2.5.0"], "result": "unknown"},
//	  {"client": 3, "id": "lin-1", "call": 6000, "return": 6100,
//	   "op": "highest", "result": "ok", "value": 2},
//	  {"client": 4, "id": "lin-1", "call": 6000, "return": 6400,
//	   "op": "replay", "result": "ok", "highest": 2, "replayed": [[1, "c0.3.0"], [2, "c0.3.1"]]},
//	  {"client": 5, "id": "lin-1", "call": 6500, "return": 6900,
//	   "op": "save_snapshot", "seq": 2, "payload": "s5.0", "result": "ok"},
//	  {"client": 6, "id": "lin-1", "call": 7000, "return": 7200,
//	   "op": "load_snapshot", "result": "ok", "snapshot": [2, "s5.0"]}
//	]}
//
// Times are integers (nanoseconds of one monotonic clock). Results:
//
//   - write: "ok" (stored), "conflict" (the first number was taken: nothing stored) or
//     "unknown" (the call failed in a way that leaves open whether it was stored: a
//     timeout, an unavailable server, a cut connection). An unknown write is modelled the
//     standard Porcupine way: its return time is the end of the history and any outcome
//     is accepted, so it may take effect at any moment after its call, or never.
//   - highest / replay: "ok" with "value" / "replayed" (and optionally "highest", the
//     highest sequence number the replay reported); any other result (a read that failed)
//     is left out, since a read changes nothing.
//   - save_snapshot: "ok" or "unknown" (as for a write).
//   - load_snapshot (the latest): "ok" with "snapshot" ([sequence number, payload id], or
//     null for none); any other result is left out.
//
// The model of one id's journal (the history is partitioned by "id"): the state is the
// highest sequence number and the stored events (sequence number and payload id).
// write(from, events) conflicts when from <= highest (every number at or below the highest
// is taken), else stores the events at from, from+1, ... and the highest becomes the last
// of them (a write may start above highest+1, as the journal allows). highest() answers
// the highest; replay() answers every stored event in order (and, when recorded, the
// highest as of the same moment). An id's snapshots are a partition of their own: a map
// from sequence number to payload id; save_snapshot(seq, payload) replaces the snapshot at
// seq; load_snapshot() answers the one with the highest sequence number, or none.
//
// Unknown writes that an id's final replay (one invoked after every other operation of the
// id returned) shows never took effect are left out before the check (see pruneUnseen;
// -no-prune keeps them).
//
// Exit status: 0 linearizable, 1 not linearizable (the failing id's operations are
// printed, with Porcupine's longest linearizable prefixes and a minimal failing history),
// 2 usage or input error, 3 the checker timed out before deciding ("unknown").
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// endOfHistory is the return time of an unknown write: after every recorded time.
const endOfHistory = math.MaxInt64 / 2

// Op is one recorded operation, as the test writes it.
type Op struct {
	Client   int             `json:"client"`
	ID       string          `json:"id"`
	Call     int64           `json:"call"`
	Return   *int64          `json:"return"`
	Op       string          `json:"op"`
	From     uint64          `json:"from"`
	Events   []string        `json:"events"`
	Result   string          `json:"result"`
	Value    uint64          `json:"value"`
	Replayed []ReplayedEvent `json:"replayed"`
	Highest  *uint64         `json:"highest"`
	Seq      uint64          `json:"seq"`
	Payload  string          `json:"payload"`
	Snapshot *ReplayedEvent  `json:"snapshot"`
	Error    string          `json:"error,omitempty"`
}

// ReplayedEvent is [sequence number, payload id].
type ReplayedEvent struct {
	Seq     uint64
	Payload string
}

// UnmarshalJSON reads [seq, "payload"].
func (e *ReplayedEvent) UnmarshalJSON(b []byte) error {
	var pair []json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil {
		return err
	}
	if len(pair) != 2 {
		return fmt.Errorf("a replayed event is [sequence number, payload id], got %s", b)
	}
	if err := json.Unmarshal(pair[0], &e.Seq); err != nil {
		return err
	}
	return json.Unmarshal(pair[1], &e.Payload)
}

// History is the file's content.
type History struct {
	Ops []Op `json:"ops"`
}

// input of a model step.
type input struct {
	kind   string // "write", "highest", "replay", "save_snapshot", "load_snapshot"
	id     string
	from   uint64
	events string // encoded as in state.events
	count  uint64
	index  int // position in the input history
	// save_snapshot: the snapshot's sequence number and payload id
	seq     uint64
	payload string
}

// output of a model step.
type output struct {
	result  string // "ok", "conflict", "unknown"
	value   uint64
	events  string
	unknown bool
	// replay: value is the highest the replay reported
	hasHighest bool
	// load_snapshot: "seq:payload" of the snapshot loaded, "" for none
	snapshot string
}

// state of one id's journal, or of its snapshots (their own partition): comparable with ==.
type state struct {
	highest uint64
	events  string // "seq:payload " per stored event, in order
	// the snapshots: "seq:payload " per saved snapshot, by ascending sequence number
	snapshots string
}

// saveSnapshot replaces or inserts the snapshot at seq.
func saveSnapshot(snapshots string, seq uint64, payload string) string {
	var kept []string
	placed := false
	entry := fmt.Sprintf("%d:%s", seq, payload)
	for _, e := range strings.Fields(snapshots) {
		var n uint64
		fmt.Sscanf(e, "%d:", &n)
		switch {
		case n == seq:
			continue
		case n > seq && !placed:
			kept = append(kept, entry)
			placed = true
		}
		kept = append(kept, e)
	}
	if !placed {
		kept = append(kept, entry)
	}
	return strings.Join(kept, " ") + " "
}

// latestSnapshot is the snapshot with the highest sequence number, "" for none.
func latestSnapshot(snapshots string) string {
	fields := strings.Fields(snapshots)
	if len(fields) == 0 {
		return ""
	}
	return fields[len(fields)-1]
}

func encodeEvents(from uint64, payloads []string) string {
	var b strings.Builder
	for i, p := range payloads {
		fmt.Fprintf(&b, "%d:%s ", from+uint64(i), p)
	}
	return b.String()
}

func encodeReplayed(events []ReplayedEvent) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "%d:%s ", e.Seq, e.Payload)
	}
	return b.String()
}

func short(events string) string {
	fields := strings.Fields(events)
	if len(fields) <= 6 {
		return "[" + strings.Join(fields, " ") + "]"
	}
	return fmt.Sprintf("[%s ... %s] (%d events)", strings.Join(fields[:3], " "), strings.Join(fields[len(fields)-2:], " "), len(fields))
}

func step(st, in, out interface{}) (bool, interface{}) {
	s := st.(state)
	i := in.(input)
	o := out.(output)
	switch i.kind {
	case "write":
		taken := i.from <= s.highest
		next := s
		if !taken {
			next = state{highest: i.from + i.count - 1, events: s.events + i.events}
		}
		switch {
		case o.unknown:
			return true, next
		case o.result == "ok":
			return !taken, next
		case o.result == "conflict":
			return taken, s
		default:
			return false, s
		}
	case "highest":
		return o.value == s.highest, s
	case "replay":
		return o.events == s.events && (!o.hasHighest || o.value == s.highest), s
	case "save_snapshot":
		next := s
		next.snapshots = saveSnapshot(s.snapshots, i.seq, i.payload)
		return true, next
	case "load_snapshot":
		return o.snapshot == latestSnapshot(s.snapshots), s
	}
	return false, s
}

func describeOperation(in, out interface{}) string {
	i := in.(input)
	o := out.(output)
	switch i.kind {
	case "write":
		r := o.result
		if o.unknown {
			r = "unknown"
		}
		return fmt.Sprintf("write(from %d, %s) -> %s", i.from, short(i.events), r)
	case "highest":
		return fmt.Sprintf("highest() -> %d", o.value)
	case "save_snapshot":
		r := o.result
		if o.unknown {
			r = "unknown"
		}
		return fmt.Sprintf("save_snapshot(%d:%s) -> %s", i.seq, i.payload, r)
	case "load_snapshot":
		if o.snapshot == "" {
			return "load_snapshot() -> none"
		}
		return fmt.Sprintf("load_snapshot() -> %s", o.snapshot)
	default:
		if o.hasHighest {
			return fmt.Sprintf("replay() -> highest %d, %s", o.value, short(o.events))
		}
		return fmt.Sprintf("replay() -> %s", short(o.events))
	}
}

func describeState(st interface{}) string {
	s := st.(state)
	if s.snapshots != "" {
		return fmt.Sprintf("snapshots %s", short(s.snapshots))
	}
	return fmt.Sprintf("highest %d, events %s", s.highest, short(s.events))
}

func model(partitioned bool) porcupine.Model {
	m := porcupine.Model{
		Init: func() interface{} { return state{} },
		Step: step,
		Hash: func(st interface{}) uint64 {
			s := st.(state)
			h := fnv.New64a()
			fmt.Fprintf(h, "%d|%s|%s", s.highest, s.events, s.snapshots)
			return h.Sum64()
		},
		DescribeOperation: describeOperation,
		DescribeState:     describeState,
	}
	if partitioned {
		m.Partition = func(history []porcupine.Operation) [][]porcupine.Operation {
			return partition(history)
		}
	}
	return m
}

// partition groups operations by persistence id, ids in sorted order.
func partition(history []porcupine.Operation) [][]porcupine.Operation {
	byID := map[string][]porcupine.Operation{}
	var ids []string
	for _, op := range history {
		id := op.Input.(input).id
		if _, ok := byID[id]; !ok {
			ids = append(ids, id)
		}
		byID[id] = append(byID[id], op)
	}
	sort.Strings(ids)
	out := make([][]porcupine.Operation, 0, len(ids))
	for _, id := range ids {
		out = append(out, byID[id])
	}
	return out
}

// convert turns the recorded ops into Porcupine operations; failed reads are left out.
func convert(h History) ([]porcupine.Operation, int, error) {
	// Unknown writes return "at the end of the history": after everything recorded.
	infinity := int64(endOfHistory)
	var ops []porcupine.Operation
	dropped := 0
	for n, op := range h.Ops {
		in := input{kind: op.Op, id: op.ID, index: n}
		var out output
		if op.ID == "" {
			return nil, 0, fmt.Errorf("op %d: no id", n)
		}
		switch op.Op {
		case "write":
			if len(op.Events) == 0 || op.From == 0 {
				return nil, 0, fmt.Errorf("op %d: a write needs from >= 1 and events", n)
			}
			in.from = op.From
			in.events = encodeEvents(op.From, op.Events)
			in.count = uint64(len(op.Events))
			switch op.Result {
			case "ok", "conflict":
				out.result = op.Result
			case "unknown":
				out.unknown = true
			default:
				return nil, 0, fmt.Errorf("op %d: a write's result is ok, conflict or unknown, not %q", n, op.Result)
			}
		case "highest", "replay":
			if op.Result != "ok" {
				dropped++
				continue
			}
			out.result = "ok"
			out.value = op.Value
			out.events = encodeReplayed(op.Replayed)
			if op.Op == "replay" && op.Highest != nil {
				out.value = *op.Highest
				out.hasHighest = true
			}
		case "save_snapshot":
			// The snapshots of an id are their own partition.
			in.id = op.ID + " (snapshots)"
			in.seq = op.Seq
			in.payload = op.Payload
			switch op.Result {
			case "ok":
				out.result = op.Result
			case "unknown":
				out.unknown = true
			default:
				return nil, 0, fmt.Errorf("op %d: a snapshot save's result is ok or unknown, not %q", n, op.Result)
			}
		case "load_snapshot":
			in.id = op.ID + " (snapshots)"
			if op.Result != "ok" {
				dropped++
				continue
			}
			out.result = "ok"
			if op.Snapshot != nil {
				out.snapshot = fmt.Sprintf("%d:%s", op.Snapshot.Seq, op.Snapshot.Payload)
			}
		default:
			return nil, 0, fmt.Errorf("op %d: unknown op %q (write, highest, replay, save_snapshot, load_snapshot)", n, op.Op)
		}
		ret := infinity
		if !out.unknown {
			if op.Return == nil {
				return nil, 0, fmt.Errorf("op %d: a %s result needs a return time", n, op.Result)
			}
			ret = *op.Return
			if ret < op.Call {
				return nil, 0, fmt.Errorf("op %d: returns (%d) before its call (%d)", n, ret, op.Call)
			}
		}
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: in, Call: op.Call, Output: out, Return: ret})
	}
	return ops, dropped, nil
}

// pruneUnseen leaves out the unknown writes that an id's final replay shows never took
// effect: none of their events is in it. A final replay is one invoked after every other
// completed operation of the id had returned (the test reads each id once more after the
// run). This is sound for a journal that never deletes: in any linearization such a write
// either stored nothing (a conflict) or comes after the final replay, where no operation
// but other unknown writes follows it and nothing observes it; and a linearization of the
// history without it stays one with it appended at the end. Pending writes cost Porcupine
// a search over which of them took effect (2^n for n pending no-op writes), and most
// unknown writes never reached the server, so this keeps the search small. A write with
// some but not all of its events replayed stays (Porcupine then finds the partial write).
func pruneUnseen(ops []porcupine.Operation) ([]porcupine.Operation, int) {
	lastReturn := map[string]int64{}
	for _, op := range ops {
		id := op.Input.(input).id
		if op.Return < endOfHistory && op.Return > lastReturn[id] {
			lastReturn[id] = op.Return
		}
	}
	final := map[string]porcupine.Operation{}
	for _, op := range ops {
		in := op.Input.(input)
		if in.kind != "replay" {
			continue
		}
		// Every other completed op returned before this one was called (its own return is
		// the id's last return).
		others := int64(0)
		for _, o := range ops {
			if o.Input.(input).id == in.id && o.Return < endOfHistory && o.Input.(input).index != in.index && o.Return > others {
				others = o.Return
			}
		}
		if op.Call > others && op.Return == lastReturn[in.id] {
			final[in.id] = op
		}
	}
	kept := ops[:0:0]
	pruned := 0
	for _, op := range ops {
		in := op.Input.(input)
		out := op.Output.(output)
		if f, ok := final[in.id]; ok && in.kind == "write" && out.unknown {
			// By payload id alone: a payload stored at another number keeps its write.
			replayed := map[string]bool{}
			for _, ev := range strings.Fields(f.Output.(output).events) {
				replayed[ev[strings.IndexByte(ev, ':')+1:]] = true
			}
			seen := false
			for _, ev := range strings.Fields(in.events) {
				if replayed[ev[strings.IndexByte(ev, ':')+1:]] {
					seen = true
				}
			}
			if !seen {
				pruned++
				continue
			}
		}
		kept = append(kept, op)
	}
	return kept, pruned
}

func printOps(w io.Writer, ops []porcupine.Operation, infinity int64) {
	sorted := append([]porcupine.Operation(nil), ops...)
	sort.SliceStable(sorted, func(a, b int) bool { return sorted[a].Call < sorted[b].Call })
	for _, op := range sorted {
		ret := fmt.Sprintf("%d", op.Return)
		if op.Return >= infinity {
			ret = "end"
		}
		fmt.Fprintf(w, "    #%-4d client %-2d [%d, %s] %s\n", op.Input.(input).index, op.ClientId, op.Call, ret, describeOperation(op.Input, op.Output))
	}
}

// minimize drops, one at a time, the operations that change no state (reads and
// conflicting writes) while the rest stays non-linearizable: what is left is a failing
// history from which no further read or conflicting write can be removed. (Dropping a
// read cannot make a linearizable history non-linearizable, so the smaller history's
// failure is the larger one's; writes that stored or may have stored stay.)
func minimize(ops []porcupine.Operation, deadline time.Time) []porcupine.Operation {
	m := model(false)
	current := append([]porcupine.Operation(nil), ops...)
	for i := len(current) - 1; i >= 0; i-- {
		if time.Now().After(deadline) {
			break
		}
		in := current[i].Input.(input)
		out := current[i].Output.(output)
		if in.kind == "save_snapshot" || in.kind == "write" && (out.unknown || out.result == "ok") {
			continue
		}
		candidate := append(append([]porcupine.Operation(nil), current[:i]...), current[i+1:]...)
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if porcupine.CheckOperationsTimeout(m, candidate, left) == porcupine.Illegal {
			current = candidate
		}
	}
	return current
}

func main() {
	timeout := flag.Duration("timeout", 30*time.Second, "give up (verdict unknown, exit 3) after this long")
	html := flag.String("html", "", "write Porcupine's visualization of the whole history to this file")
	noPrune := flag.Bool("no-prune", false, "keep the unknown writes that a final replay shows never took effect")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-timeout 30s] [-html out.html] [history.json | -]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	var r io.Reader = os.Stdin
	name := "stdin"
	if flag.NArg() == 1 && flag.Arg(0) != "-" {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintf(os.Stderr, "linearizability: %v\n", err)
			os.Exit(2)
		}
		defer f.Close()
		r = f
		name = flag.Arg(0)
	}
	var h History
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		fmt.Fprintf(os.Stderr, "linearizability: %s: %v\n", name, err)
		os.Exit(2)
	}
	ops, dropped, err := convert(h)
	if err != nil {
		fmt.Fprintf(os.Stderr, "linearizability: %s: %v\n", name, err)
		os.Exit(2)
	}
	pruned := 0
	if !*noPrune {
		ops, pruned = pruneUnseen(ops)
	}
	infinity := int64(endOfHistory)

	started := time.Now()
	deadline := started.Add(*timeout)
	verdict := porcupine.Ok
	var failing [][]porcupine.Operation
	parts := partition(ops)
	for _, part := range parts {
		left := time.Until(deadline)
		if left <= 0 {
			verdict = porcupine.Unknown
			break
		}
		switch porcupine.CheckOperationsTimeout(model(false), part, left) {
		case porcupine.Illegal:
			verdict = porcupine.Illegal
			failing = append(failing, part)
		case porcupine.Unknown:
			if verdict == porcupine.Ok {
				verdict = porcupine.Unknown
			}
		}
	}
	elapsed := time.Since(started)
	prunedText := fmt.Sprintf("%d unknown writes no final replay shows left out", pruned)
	if *noPrune {
		prunedText = "every unknown write kept, -no-prune"
	}
	fmt.Printf("linearizability: %d operations (%d failed reads left out, %s) in %d partitions (ids, and their snapshots): %s in %.3f s\n",
		len(ops), dropped, prunedText, len(parts), verdict, elapsed.Seconds())

	if *html != "" {
		_, info := porcupine.CheckOperationsVerbose(model(true), ops, *timeout)
		if err := porcupine.VisualizePath(model(true), info, *html); err != nil {
			fmt.Fprintf(os.Stderr, "linearizability: writing %s: %v\n", *html, err)
		} else {
			fmt.Printf("linearizability: visualization in %s\n", *html)
		}
	}

	switch verdict {
	case porcupine.Ok:
		os.Exit(0)
	case porcupine.Unknown:
		fmt.Printf("linearizability: verdict unknown: the checker gave up after %s (make the history smaller)\n", *timeout)
		os.Exit(3)
	}
	for _, part := range failing {
		id := part[0].Input.(input).id
		fmt.Printf("\nNOT LINEARIZABLE: persistence id %q (%d operations):\n", id, len(part))
		printOps(os.Stdout, part, infinity)
		_, info := porcupine.CheckOperationsVerbose(model(false), part, *timeout)
		for _, partials := range info.PartialLinearizationsOperations() {
			longest := []porcupine.Operation{}
			for _, p := range partials {
				if len(p) > len(longest) {
					longest = p
				}
			}
			fmt.Printf("  the longest linearizable prefix Porcupine found (%d of %d operations), in linearization order:\n", len(longest), len(part))
			st := interface{}(state{})
			for _, op := range longest {
				_, st = step(st, op.Input, op.Output)
				fmt.Printf("    #%-4d client %-2d %s  => %s\n", op.Input.(input).index, op.ClientId, describeOperation(op.Input, op.Output), describeState(st))
			}
		}
		small := minimize(part, time.Now().Add(*timeout))
		fmt.Printf("  minimal failing history (%d operations; no read or conflicting write can be dropped and stay failing):\n", len(small))
		printOps(os.Stdout, small, infinity)
	}
	os.Exit(1)
}
