import BlockExchange
import HarpKernel

/// Proof that an operation was made by the node it names (its origin), however many relays it
/// passed: each origin chains its operations — chain(n) = SHA-256(chain(n − 1) · body(n)),
/// starting from SHA-256 of a tag and the origin's ID — and signs the chain with its node key
/// at the end of every run it makes (at most `signingRun` operations). One Ed25519 check
/// (~60 µs) then proves a whole run, and the SHA-256 per operation (~1 µs) keeps the
/// receiver past 50,000 operations a second; a run can be neither cut short, reordered,
/// changed nor extended without the origin's key.
///
/// The receiver holds, per origin, the chain through the last operation it applied (`Head`);
/// operations come as runs from there (delta anti-entropy sends exactly that), and a run is
/// applied up to its last valid signature. A node that took a peer's settled state starts each
/// chain from the state's floor hashes: what came before the floor is trusted to the peer it
/// took the state from, and checked as the settled-state rules say.
enum OperationChain {
    static let tag = Array("harp-operations-1".utf8)
    /// A local commit signs at least every this many operations, so that anti-entropy can cut
    /// batches (of 2,000) at signatures.
    static let signingRun = 500

    /// The chain hash before an origin's first operation.
    static func start(_ origin: NodeID) -> [UInt8] {
        let digest = SHA256()
        digest.update(tag)
        digest.update(origin.bytes)
        return digest.finalize()
    }

    static func next(_ previous: [UInt8], _ logged: LoggedOperation) -> [UInt8] {
        let digest = SHA256()
        digest.update(previous)
        digest.update(OperationCodec.body(logged))
        return digest.finalize()
    }

    /// What an origin signs for the run ending at `sequence`.
    static func message(origin: NodeID, sequence: UInt64, chain: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: 96)
        writer.raw(tag)
        writer.raw(origin.bytes)
        writer.u64(sequence)
        writer.raw(chain)
        return writer.bytes
    }

    /// Where an origin's chain stands on this node: through `sequence`.
    struct Head: Sendable, Equatable {
        var sequence: UInt64
        var hash: [UInt8]
    }

    /// Signs this node's new operations, continuing its chain from `head`.
    static func sign(_ made: [LoggedOperation], from head: Head, key: Ed25519.PrivateKey) -> [LoggedOperation] {
        var hash = head.hash
        return made.enumerated().map { index, logged in
            var signed = logged
            hash = next(hash, logged)
            signed.chain = hash
            if index == made.count - 1 || (index + 1) % signingRun == 0 {
                signed.proof = OperationProof(publicKey: key.publicKey,
                                              signature: key.sign(message(origin: logged.origin, sequence: logged.sequence, chain: hash)))
            }
            return signed
        }
    }

    /// What `verify` made of a batch: runs proven (with their chains set), and operations it
    /// could not prove yet (after a gap, or after a run's last signature) — dropped, not
    /// penalized; anti-entropy sends them again from the receiver's vector.
    struct Verified {
        var proven: [LoggedOperation] = []
        var heads: [NodeID: Head] = [:]
        var unproven = 0
    }

    /// Checks a batch against the chains held (`heads`, and `known` for operations already
    /// held). Throws for a proof that does not check — a forged or changed operation.
    static func verify(_ batch: [LoggedOperation], heads: [NodeID: Head],
                       known: (LoggedOperation) -> Bool) throws(SyncRefusal) -> Verified {
        var result = Verified()
        var byOrigin: [NodeID: [LoggedOperation]] = [:]
        for logged in batch where !known(logged) { byOrigin[logged.origin, default: []].append(logged) }
        for (origin, operations) in byOrigin {
            var head = heads[origin] ?? Head(sequence: 0, hash: start(origin))
            var pending: [LoggedOperation] = []
            for logged in operations.sorted(by: { $0.sequence < $1.sequence }) {
                guard logged.sequence == head.sequence + 1 + UInt64(pending.count) else { break }
                var chained = logged
                chained.chain = next(pending.last?.chain ?? head.hash, logged)
                pending.append(chained)
                guard let proof = logged.proof else { continue }
                guard NodeID(publicKey: Ed25519.subjectPublicKeyInfo(proof.publicKey)) == origin else {
                    throw .forged("operation \(logged.sequence) of \(origin) is signed with another node's key")
                }
                guard Ed25519.verify(proof.signature, of: message(origin: origin, sequence: logged.sequence, chain: chained.chain!),
                                     publicKey: proof.publicKey) else {
                    throw .forged("the signature on operations \(head.sequence + 1)–\(logged.sequence) of \(origin) does not match them")
                }
                result.proven += pending
                head = Head(sequence: logged.sequence, hash: chained.chain!)
                pending = []
            }
            result.unproven += operations.count - Int(head.sequence - (heads[origin]?.sequence ?? 0))
            if head.sequence > heads[origin]?.sequence ?? 0 { result.heads[origin] = head }
        }
        return result
    }
}
