namespace SEmigrate.Workers.Tests;

/// <summary>Searches files on disk for secrets the test planted in a guest, as someone who takes a host's
/// disk would: every byte of every regular file given, or under the folders given.</summary>
internal static class DiskSearch
{
    /// <summary>The files under <paramref name="roots"/> that hold <paramref name="marker"/>, with how many times each does.</summary>
    public static IReadOnlyList<(string File, long Hits)> Find(IEnumerable<string> roots, string marker)
    {
        var options = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = FileAttributes.ReparsePoint };
        var found = new List<(string, long)>();
        foreach (var file in roots.Where(Directory.Exists).SelectMany(r => Directory.EnumerateFiles(r, "*", options)).Distinct())
        {
            long hits;
            try
            {
                hits = Count([file], marker)[marker];
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // a socket, or a file gone meanwhile
            }
            if (hits > 0)
            {
                found.Add((file, hits));
            }
        }
        return found;
    }

    /// <summary>Counts markers in files of any size (store files are large and sparse) in one pass, in
    /// chunks that overlap by the longest marker's length so that none is missed at a boundary.</summary>
    public static Dictionary<string, long> Count(IEnumerable<string> files, params string[] markers)
    {
        var needles = markers.Select(System.Text.Encoding.ASCII.GetBytes).ToArray();
        var counts = markers.ToDictionary(m => m, _ => 0L);
        var overlap = needles.Max(n => n.Length) - 1;
        var buffer = new byte[16 << 20];
        foreach (var file in files)
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            var kept = 0;
            int read;
            while ((read = stream.Read(buffer, kept, buffer.Length - kept)) > 0)
            {
                var span = buffer.AsSpan(0, kept + read);
                for (var i = 0; i < needles.Length; i++)
                {
                    // A match wholly inside the kept tail was counted in the chunk before.
                    var rest = span;
                    var offset = 0;
                    for (int at; (at = rest.IndexOf(needles[i])) >= 0; rest = rest[(at + 1)..])
                    {
                        offset += at + 1;
                        if (offset - 1 + needles[i].Length > kept)
                        {
                            counts[markers[i]]++;
                        }
                    }
                }
                kept = Math.Min(overlap, span.Length);
                span[^kept..].CopyTo(buffer);
            }
        }
        return counts;
    }
}
