import BlockExchange
import CoreMetrics
import CShims
import Foundation
import Glibc
import HarpKernel
import Logging

extension MetadataNode {
    // MARK: Commands

    /// The folder as the replica shows it, built once per replica generation: a pass while
    /// only content lands reuses it (building it for 20,000 files took 17% of a receiving
    /// node's CPU, twice a pass).
    func view() -> FolderView {
        if let cached = cachedView, cached.generation == replica.generation { return cached.view }
        let view = FolderView(tree: replica.tree, histories: replica.histories)
        cachedView = (replica.generation, view)
        return view
    }

    /// Operations the log keeps (settled moves are not among them).
    var operationsKept: Int { replica.operationCount }

    func recentOperations(_ count: Int) -> [LoggedOperation] { Self.newest(count, of: replica) }

    /// The newest `count` operations `replica` keeps, newest first.
    static func newest(_ count: Int, of replica: Replica) -> [LoggedOperation] {
        Array(replica.allOperations.sorted { $0.operation.timestamp > $1.operation.timestamp }.prefix(count))
    }

    /// A new version of `path` with the content of its version `number` (history only grows).
    /// A deleted file (`ls --deleted`) is restored the same way: the new version is newer than
    /// the delete, so the file comes back where it was, with its deleted directories — not
    /// with what else was deleted with them (`FolderView.shown`).
    func restore(_ path: String, version number: Int) async -> String? {
        let view = view()
        guard let entry = view.entries[path] ?? view.deleted[path], !entry.isDirectory else {
            return "\(path) is not a file in the folder, nor a deleted one (harp storage ls --deleted)"
        }
        guard number >= 1, number <= entry.history.count else { return "\(path) has versions 1 to \(entry.history.count), not \(number)" }
        guard let head = entry.head else { return "\(path) has no content" }
        let old = entry.history[number - 1].version
        // Its bytes must be somewhere first: a head nobody can fetch would be retried forever.
        if let missing = await keepForRestore(old.root) { return "version \(number) of \(path) cannot come back: \(missing)" }
        await commit([.now { .version(.init(timestamp: $0, item: head.item, root: old.root, size: old.size, mtime: old.mtime, base: head.root, mode: old.mode)) }])
        requestWork()
        return nil
    }
}
