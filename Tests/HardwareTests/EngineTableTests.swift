import Testing
import Hardware

@Suite struct EngineTableTests {
    @Test func everyIDIsListedOnce() {
        let ids = EngineTable.all.map(\.id)
        #expect(Set(ids).count == ids.count)
    }

    @Test(arguments: EngineTable.all)
    func identifyFindsEveryRow(_ row: EngineIdentity) {
        #expect(EngineTable.identify(row.id) == row)
    }

    @Test func unknownIDIsNotAnEngine() {
        #expect(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x1234)) == nil)
        #expect(EngineTable.identify(PCIID(vendor: 0x10EC, device: 0x0B00)) == nil)
    }

    @Test func cbdmaGenerationsMatchTheirCBVER() throws {
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x0B00))).expectedVersion == 0x34)
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x2021))).expectedVersion == 0x32)
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x6F51))).expectedVersion == 0x33)
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x3433))).expectedVersion == 0x30)
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x0B25))).family == .dsa)
        #expect(try #require(EngineTable.identify(PCIID(vendor: 0x8086, device: 0x0CFE))).supported == false)
    }

    @Test(arguments: IOAT.profiles)
    func profilesAreConsistentWithTheTable(_ profile: IOAT.Profile) throws {
        let row = try #require(EngineTable.identify(PCIID(vendor: IOAT.vendorID, device: profile.deviceID)))
        #expect(row.family == .ioat)
        #expect(UInt32(profile.cbver) == row.expectedVersion || profile.deviceID == 0x2021)
        #expect(profile.maximumTransferSize >= 4096)
        #expect(profile.splitsWide64BitWrites == (profile.cbver < 0x33))
    }

    @Test func chanErrDecodesNamedAndUnknownBits() {
        let e = IOAT.ChanErr(rawValue: 0x0000_0801 | 0x8000_0000)
        #expect(e.causes == ["source address error (XSADDERR)", "descriptor transfer size error (DXSERR)",
                             "unknown CHANERR bits 0x80000000"])
    }
}
